//! The span and request id of the call a piece of work serves, carried to the task or actor
//! that does it.
//!
//! A `tracing` span and a [`RequestId`] scope belong to a task: work handed to another task
//! (`tokio::spawn`) or another actor (a repository actor's message) loses both unless it takes
//! them along. The router captures a [`Traced`] while it runs a call; whoever runs the work
//! later enters it again, so the node's log lines for that work name the HTTP request, and the
//! calls it sends to other nodes carry its id.

use std::future::Future;

use tracing::Instrument;
use wharf_proto::RequestId;

/// See the module doc.
#[derive(Clone, Debug)]
pub(crate) struct Traced {
    span: tracing::Span,
    request_id: Option<RequestId>,
}

impl Traced {
    /// The span and request id of the running task.
    pub fn current() -> Traced {
        Traced {
            span: tracing::Span::current(),
            request_id: RequestId::current(),
        }
    }

    /// `work`, to run inside this span and request id wherever it is polled.
    pub fn wrap<F: Future + Send>(self, work: F) -> impl Future<Output = F::Output> + Send {
        let Traced { span, request_id } = self;
        async move {
            match request_id {
                Some(id) => id.scope(work.instrument(span)).await,
                None => work.instrument(span).await,
            }
        }
    }

    /// Spawns `work` on its own task, inside this span and request id.
    pub fn spawn(self, work: impl Future<Output = ()> + Send + 'static) {
        drop(tokio::spawn(self.wrap(work)));
    }
}
