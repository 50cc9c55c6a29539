//! What a job leaves besides its exit status, turned into what the platform keeps: the JUnit
//! XML its tests wrote (counts, time and the failed cases), the Cobertura XML of its coverage
//! (a percentage).
//!
//! Reports come from many tools (pytest, surefire, cargo-nextest, jest-junit,
//! go-junit-report) that agree on the elements but not on the summary attributes, so the
//! counts here are taken from the test cases themselves.

use roxmltree::{Document, Node};
use wharf_proto::{TestFailure, TestReport};

/// The failed cases a report keeps; the counts still count them all.
const MAX_FAILURES: usize = 100;

/// The longest failure message kept, in bytes: a stack trace is for the job's log.
const MAX_MESSAGE_BYTES: usize = 1_000;

/// Reads a JUnit XML report: a `<testsuites>` root (its suites may nest) or a single
/// `<testsuite>` root.
///
/// A `<testcase>` with a `<failure>` or `<error>` child failed, one with `<skipped>` was
/// skipped, any other passed. The duration is the sum of the cases' `time` (seconds; a missing
/// or unreadable time counts as 0). The first 100 failed cases are kept with their
/// message. Malformed XML, or any other root, is an error saying why and where.
pub fn parse_junit(xml: &str) -> Result<TestReport, String> {
    let document = parse_xml(xml)?;
    let root = document.root_element();
    let root_name = root.tag_name().name();
    if root_name != "testsuites" && root_name != "testsuite" {
        return Err(format!("not a JUnit report: the root is <{root_name}>, not <testsuites> or <testsuite>"));
    }
    let mut report = TestReport::default();
    let mut seconds = 0.0;
    for case in root.descendants().filter(|node| is_element(node, "testcase")) {
        seconds += case_seconds(&case);
        match failure_of(&case) {
            Some(failure) => {
                report.failed += 1;
                if report.failures.len() < MAX_FAILURES {
                    report.failures.push(test_failure(&case, &failure));
                }
            }
            None if child(&case, "skipped").is_some() => report.skipped += 1,
            None => report.passed += 1,
        }
    }
    report.duration_ms = (seconds * 1000.0).round() as u64;
    Ok(report)
}

/// Reads a Cobertura XML report: the root `<coverage>`'s `line-rate` (a fraction of 1) as a
/// percentage, rounded to two decimals (0.8731 gives 87.31).
pub fn parse_cobertura(xml: &str) -> Result<f64, String> {
    let document = parse_xml(xml)?;
    let root = document.root_element();
    if !is_element(&root, "coverage") {
        return Err(format!("not a Cobertura report: the root is <{}>, not <coverage>", root.tag_name().name()));
    }
    let text = root.attribute("line-rate").ok_or("the <coverage> element has no line-rate")?;
    let rate: f64 = text.trim().parse().map_err(|_| format!("line-rate {text:?} is not a number"))?;
    // The range check also turns away NaN and infinities, which `parse` accepts.
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("line-rate {text:?} is not between 0 and 1"));
    }
    Ok((rate * 10_000.0).round() / 100.0)
}

/// Parses `xml`, the error naming the line and column where it broke.
fn parse_xml(xml: &str) -> Result<Document<'_>, String> {
    // roxmltree's errors end with "at line:column".
    Document::parse(xml).map_err(|error| format!("malformed XML: {error}"))
}

/// Whether `node` is an element named `name`, whatever its namespace.
fn is_element(node: &Node, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name
}

/// The first child element of `node` named `name`.
fn child<'a, 'input>(node: &Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|child| is_element(child, name))
}

/// The `<failure>` or `<error>` of a test case, if it failed.
fn failure_of<'a, 'input>(case: &Node<'a, 'input>) -> Option<Node<'a, 'input>> {
    case.children().find(|child| is_element(child, "failure") || is_element(child, "error"))
}

/// A case's `time` in seconds. Tools leave it out or write odd values; neither should fail
/// the whole report, so they count as nothing.
fn case_seconds(case: &Node) -> f64 {
    let seconds = case.attribute("time").and_then(|time| time.trim().parse::<f64>().ok()).unwrap_or(0.0);
    if seconds.is_finite() && seconds > 0.0 {
        seconds
    } else {
        0.0
    }
}

/// The record of a failed `case`, whose `<failure>` or `<error>` is `failure`.
fn test_failure(case: &Node, failure: &Node) -> TestFailure {
    let suite = case.ancestors().find(|node| is_element(node, "testsuite"));
    TestFailure {
        suite: suite.and_then(|suite| suite.attribute("name")).unwrap_or_default().to_owned(),
        class: case.attribute("classname").unwrap_or_default().to_owned(),
        name: case.attribute("name").unwrap_or_default().to_owned(),
        message: failure_message(failure),
    }
}

/// The message of a `<failure>` or `<error>`: its `message` attribute or, when that is missing
/// or blank (jest-junit and go-junit-report put everything in the text), its text; trimmed and
/// cut to [`MAX_MESSAGE_BYTES`].
fn failure_message(failure: &Node) -> String {
    let attribute = failure.attribute("message").map(str::trim).filter(|message| !message.is_empty());
    let message = match attribute {
        Some(message) => message.to_owned(),
        // All the text nodes, so that text around a CDATA section or a comment is not lost.
        None => failure.descendants().filter_map(|node| node.text().filter(|_| node.is_text())).collect(),
    };
    truncate(message.trim(), MAX_MESSAGE_BYTES).to_owned()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    // A UTF-8 char is at most 4 bytes, so this steps back at most 3 times.
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as pytest writes it: one `<testsuite>` in a `<testsuites>` root, with
    /// summary attributes that do not match the cases (they are not trusted).
    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="pytest" errors="0" failures="0" skipped="0" tests="99" time="0.5">
    <testcase classname="tests.test_math" name="test_add" time="0.001" />
    <testcase classname="tests.test_math" name="test_sub" time="0.25" />
    <testcase classname="tests.test_math" name="test_div" time="0.100">
      <failure message="ZeroDivisionError: division by zero">def test_div():
&gt;       1 / 0
E       ZeroDivisionError</failure>
    </testcase>
    <testcase classname="tests.test_io" name="test_open" time="0.0106">
      <error>
        fixture 'tmp' not found
      </error>
    </testcase>
    <testcase classname="tests.test_io" name="test_slow">
      <skipped type="pytest.skip" message="slow">skipped</skipped>
    </testcase>
  </testsuite>
</testsuites>
"#;

    #[test]
    fn a_pytest_report_is_counted_from_its_cases() {
        let report = parse_junit(PYTEST).unwrap();
        assert_eq!((report.passed, report.failed, report.skipped), (2, 2, 1));
        assert_eq!(report.duration_ms, 362, "0.001 + 0.25 + 0.1 + 0.0106 s, a missing time is 0");
        assert_eq!(
            report.failures,
            [
                TestFailure {
                    suite: "pytest".into(),
                    class: "tests.test_math".into(),
                    name: "test_div".into(),
                    message: "ZeroDivisionError: division by zero".into(),
                },
                TestFailure {
                    suite: "pytest".into(),
                    class: "tests.test_io".into(),
                    name: "test_open".into(),
                    message: "fixture 'tmp' not found".into(),
                },
            ]
        );
    }

    #[test]
    fn nested_suites_name_the_innermost_suite() {
        let xml = r#"<testsuites name="all">
  <testsuite name="outer">
    <testcase classname="a" name="one" time="1"/>
    <testsuite name="inner">
      <testcase classname="b" name="two" time="2.5"><failure><![CDATA[expected 1]]> got 2</failure></testcase>
      <testcase classname="b" name="three"><skipped/></testcase>
    </testsuite>
  </testsuite>
  <testsuite name="other"><testcase classname="c" name="four" time="0.5"><error message="boom" type="E"/></testcase></testsuite>
</testsuites>"#;
        let report = parse_junit(xml).unwrap();
        assert_eq!((report.passed, report.failed, report.skipped, report.duration_ms), (1, 2, 1, 4000));
        let seen: Vec<(&str, &str, &str)> =
            report.failures.iter().map(|f| (f.suite.as_str(), f.name.as_str(), f.message.as_str())).collect();
        assert_eq!(seen, [("inner", "two", "expected 1 got 2"), ("other", "four", "boom")]);
    }

    #[test]
    fn a_single_testsuite_root_as_surefire_writes_it() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.example.AppTest" time="0.042" tests="3" errors="0" skipped="0" failures="0">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="works" classname="com.example.AppTest" time="0.012"/>
  <testcase name="flaky" classname="com.example.AppTest" time="0.02"><flakyFailure message="once"/></testcase>
  <testcase name="breaks" classname="com.example.AppTest" time="0.01"><failure message="expected: &lt;1&gt; but was: &lt;2&gt;" type="org.opentest4j.AssertionFailedError"/></testcase>
</testsuite>"#;
        let report = parse_junit(xml).unwrap();
        assert_eq!((report.passed, report.failed, report.skipped, report.duration_ms), (2, 1, 0, 42));
        assert_eq!(report.failures[0].suite, "com.example.AppTest");
        assert_eq!(report.failures[0].message, "expected: <1> but was: <2>");
    }

    #[test]
    fn lone_cases_have_an_empty_suite_and_blank_messages_use_the_text() {
        let report = parse_junit(r#"<testsuites><testcase name="lone"><failure message="m"/></testcase></testsuites>"#).unwrap();
        assert_eq!(report.failures[0].suite, "");
        assert_eq!(report.failures[0].class, "");

        let blank = r#"<testsuite><testcase name="t"><failure message="  ">Error: expected true</failure></testcase></testsuite>"#;
        assert_eq!(parse_junit(blank).unwrap().failures[0].message, "Error: expected true", "a blank attribute falls back to the text");
    }

    #[test]
    fn malformed_reports_and_other_roots_are_errors() {
        let error = parse_junit("<testsuites>\n<testsuite name=\"a\">\n<testcase name=\"x\">\n</testsuites>").unwrap_err();
        assert_eq!(error, "malformed XML: expected 'testcase' tag, not 'testsuites' at 4:1", "the line is named");
        let error = parse_junit("<html><body/></html>").unwrap_err();
        assert_eq!(error, "not a JUnit report: the root is <html>, not <testsuites> or <testsuite>");
        assert!(parse_junit("").is_err());
        assert!(parse_junit("not xml at all").is_err());
    }

    #[test]
    fn only_the_first_hundred_failures_are_kept() {
        let cases: String = (0..150).map(|i| format!(r#"<testcase name="t{i}"><failure message="m{i}"/></testcase>"#)).collect();
        let xml = format!(r#"<testsuite name="s">{cases}<testcase name="ok"/></testsuite>"#);
        let report = parse_junit(&xml).unwrap();
        assert_eq!((report.passed, report.failed), (1, 150));
        assert_eq!(report.failures.len(), 100);
        assert_eq!(report.failures[0].name, "t0");
        assert_eq!(report.failures[99].name, "t99");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        // 999 ASCII bytes then 'é' (2 bytes): byte 1,000 falls inside the 'é'.
        let long = format!("{}é and more", "a".repeat(999));
        let xml = format!(r#"<testsuite><testcase name="t"><failure message="{long}"/></testcase></testsuite>"#);
        let message = &parse_junit(&xml).unwrap().failures[0].message;
        assert_eq!(message.len(), 999);
        assert_eq!(*message, "a".repeat(999));

        let exact = "b".repeat(1_200);
        let xml = format!(r#"<testsuite><testcase name="t"><error>  {exact}  </error></testcase></testsuite>"#);
        assert_eq!(parse_junit(&xml).unwrap().failures[0].message, "b".repeat(1_000));
    }

    #[test]
    fn cobertura_line_rate_is_a_percentage() {
        let xml = r#"<?xml version="1.0" ?>
<!-- generated by coverage.py -->
<coverage version="7.4" timestamp="1" lines-valid="100" lines-covered="87" line-rate="0.8731" branch-rate="0">
  <packages/>
</coverage>"#;
        assert_eq!(parse_cobertura(xml).unwrap(), 87.31);
        assert_eq!(parse_cobertura(r#"<coverage line-rate="1"/>"#).unwrap(), 100.0);
        assert_eq!(parse_cobertura(r#"<coverage line-rate="0.123456"/>"#).unwrap(), 12.35);
        assert_eq!(parse_cobertura(r#"<coverage branch-rate="1"/>"#).unwrap_err(), "the <coverage> element has no line-rate");
        assert_eq!(parse_cobertura(r#"<coverage line-rate="most"/>"#).unwrap_err(), "line-rate \"most\" is not a number");
        assert_eq!(parse_cobertura(r#"<coverage line-rate="1.5"/>"#).unwrap_err(), "line-rate \"1.5\" is not between 0 and 1");
        assert!(parse_cobertura(r#"<coverage line-rate="NaN"/>"#).is_err());
        assert!(parse_cobertura(r#"<report line-rate="0.5"/>"#).unwrap_err().contains("not a Cobertura report"));
        assert!(parse_cobertura("<coverage").unwrap_err().starts_with("malformed XML"));
    }
}
