//! Where the CLI finds the Wharf it talks to and its token, the way `gh` and `glab` do.
//!
//! Layers, later wins (merged with figment): the config file that `wharf login` writes
//! (`$XDG_CONFIG_HOME/wharf/config.toml`, else `~/.config/wharf/config.toml`), the variables
//! `WHARF_URL` and `WHARF_TOKEN`, then the flags `--url` and `--token`. With no token from any
//! of them, the admin token of a `wharf dev` in the current directory
//! (`./wharf-data/admin-token`) is used, and the CLI says so on standard error. The token's
//! source travels with it, so that a 401 can name it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The URL used when nothing names one: `wharf dev`'s default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The admin token of a `wharf dev` started in the current directory.
const DEV_TOKEN: &str = "wharf-data/admin-token";

/// The flags every client command takes, anywhere on the command line.
#[derive(clap::Args, Debug, Default)]
pub struct ClientArgs {
    /// The Wharf to talk to (a front's URL). Default: WHARF_URL, then the config file written
    /// by `wharf login`, then http://127.0.0.1:8080.
    #[arg(long, global = true, value_name = "URL", help_heading = "Client options")]
    pub url: Option<String>,
    /// The API token. Default: WHARF_TOKEN, then the config file written by `wharf login`,
    /// then ./wharf-data/admin-token (a `wharf dev` in this directory). Prefer WHARF_TOKEN or
    /// `wharf login`: a flag's value is visible in the process list.
    #[arg(long, global = true, value_name = "TOKEN", help_heading = "Client options")]
    pub token: Option<String>,
    /// Print the API's answer as JSON instead of tables and text.
    #[arg(long, global = true, help_heading = "Client options")]
    pub json: bool,
}

/// What the config file holds, and what each layer may set.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where a token came from, as the 401 message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Flag,
    Environment,
    ConfigFile(PathBuf),
    DevDataDir(PathBuf),
    /// The token `wharf login` is checking.
    Login,
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Flag => write!(f, "the --token flag"),
            TokenSource::Environment => write!(f, "the WHARF_TOKEN variable"),
            TokenSource::ConfigFile(path) => write!(f, "the config file {} (written by `wharf login`)", path.display()),
            TokenSource::DevDataDir(path) => write!(f, "{} (the admin token of a `wharf dev` here)", path.display()),
            TokenSource::Login => write!(f, "`wharf login`"),
        }
    }
}

/// The resolved URL and token.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub url: String,
    pub token: Option<(String, TokenSource)>,
}

/// The config file's path: `$XDG_CONFIG_HOME/wharf/config.toml`, else
/// `$HOME/.config/wharf/config.toml`; none without either variable.
pub fn config_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("wharf").join("config.toml"))
}

/// Merges the layers (see the module doc).
pub fn resolve(flags: &ClientArgs) -> anyhow::Result<Credentials> {
    let file = config_path();
    let mut figment = Figment::new();
    if let Some(path) = &file {
        figment = figment.merge(Toml::file(path));
    }
    let flag_layer = Settings { url: flags.url.clone(), token: flags.token.clone() };
    let figment = figment
        .merge(Env::prefixed("WHARF_").only(&["url", "token"]))
        .merge(Serialized::defaults(flag_layer));
    let settings: Settings = figment.extract().map_err(|error| {
        anyhow::anyhow!("cannot read the CLI's settings: {error}")
    })?;
    let source_of = |key: &str| -> Option<TokenSource> {
        let metadata = figment.find_metadata(key)?;
        Some(match &metadata.source {
            Some(figment::Source::File(path)) => TokenSource::ConfigFile(path.clone()),
            _ if metadata.name.contains("environment") => TokenSource::Environment,
            _ => TokenSource::Flag,
        })
    };
    let token = match settings.token.filter(|t| !t.trim().is_empty()) {
        Some(token) => {
            let source = source_of("token").unwrap_or(TokenSource::Flag);
            Some((token.trim().to_owned(), source))
        }
        None => dev_token(),
    };
    Ok(Credentials {
        url: settings.url.filter(|u| !u.trim().is_empty()).unwrap_or_else(|| DEFAULT_URL.to_owned()),
        token,
    })
}

/// `./wharf-data/admin-token`, with a note on standard error that it is used.
fn dev_token() -> Option<(String, TokenSource)> {
    let path = PathBuf::from(DEV_TOKEN);
    let token = std::fs::read_to_string(&path).ok()?.trim().to_owned();
    if token.is_empty() {
        return None;
    }
    eprintln!("wharf: using the token in ./{DEV_TOKEN} (no --token, WHARF_TOKEN or `wharf login`)");
    Some((token, TokenSource::DevDataDir(path)))
}

/// Writes `url` and `token` to the config file at `path` (mode 0600, its directory 0700).
pub fn save(path: &Path, url: &str, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(&Settings { url: Some(url.to_owned()), token: Some(token.to_owned()) })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: make it 0600 too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_for_the_401_message() {
        assert_eq!(TokenSource::Environment.to_string(), "the WHARF_TOKEN variable");
        assert!(TokenSource::ConfigFile("/x/config.toml".into()).to_string().contains("/x/config.toml"));
    }
}
