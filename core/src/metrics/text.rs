//! The Prometheus text format (0.0.4) made from an OpenMetrics page, which is all
//! prometheus-client encodes.
//!
//! The differences that matter to a text parser: a counter family is declared under its
//! sample name (`# TYPE x_total counter`, not `# TYPE x counter`), an info family likewise
//! (`x_info`, as a gauge); `unknown` is `untyped`; there are no `# UNIT` lines, no `_created`
//! samples, no exemplars, no `# EOF`; timestamps are integer milliseconds, not seconds; `# HELP`
//! escapes only `\` and newlines. Samples are otherwise the same lines.

use std::collections::HashMap;

/// The Prometheus text format of the OpenMetrics page `om`. Lines it cannot read are kept as
/// they are.
pub fn from_openmetrics(om: &str) -> String {
    // The types first: `# HELP` comes before `# TYPE` in a family.
    let types: HashMap<&str, &str> = om
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("# TYPE ")?.splitn(2, ' ');
            Some((it.next()?, it.next()?.trim()))
        })
        .collect();
    let renamed = |family: &str| -> String {
        match types.get(family).copied() {
            Some("counter") => format!("{family}_total"),
            Some("info") => format!("{family}_info"),
            _ => family.to_owned(),
        }
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind.trim() {
                "counter" => "counter",
                "gauge" | "info" | "stateset" => "gauge",
                "histogram" | "gaugehistogram" => "histogram",
                "summary" => "summary",
                _ => "untyped",
            };
            push_line(&mut out, &format!("# TYPE {} {kind}", renamed(family)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            push_line(
                &mut out,
                &format!("# HELP {} {}", renamed(family), help_text(help)),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match sample(line) {
            Some(s) => {
                if s.name.strip_suffix("_created").is_some_and(|base| {
                    matches!(
                        types.get(base).copied(),
                        Some("counter" | "histogram" | "summary" | "gaugehistogram")
                    )
                }) {
                    continue;
                }
                let mut l = String::with_capacity(line.len());
                l.push_str(s.name);
                l.push_str(s.labels);
                l.push(' ');
                l.push_str(s.value);
                if let Some(ts) = s.timestamp {
                    l.push(' ');
                    l.push_str(&ts);
                }
                push_line(&mut out, &l);
            }
            None => push_line(&mut out, line),
        }
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

/// OpenMetrics escapes `\`, `"` and newlines in help; the text format only `\` and newlines.
fn help_text(help: &str) -> String {
    help.replace("\\\"", "\"")
}

/// One sample line's parts (exemplar left out).
struct Sample<'a> {
    name: &'a str,
    /// `{...}` with its braces, or empty.
    labels: &'a str,
    value: &'a str,
    /// In milliseconds.
    timestamp: Option<String>,
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let close = labels_end(&line[name_end..])?;
        (
            &line[name_end..name_end + close + 1],
            &line[name_end + close + 1..],
        )
    } else {
        ("", &line[name_end..])
    };
    // What follows " # " is an exemplar.
    let rest = rest.split(" # ").next().unwrap_or("");
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let timestamp = match fields.next() {
        Some(ts) => Some(
            ts.parse::<f64>()
                .map(|s| format!("{}", (s * 1000.0).round() as i64))
                .ok()?,
        ),
        None => None,
    };
    Some(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// The index of the `}` closing the label set `s` starts with (quoted values may hold `}`).
fn labels_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    #[test]
    fn counters_are_declared_under_their_total_name() {
        let om = "# HELP sb_calls Calls.\n# TYPE sb_calls counter\nsb_calls_total 3\n\
                  sb_calls_created 1700000000.5\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP sb_calls_total Calls.\n# TYPE sb_calls_total counter\nsb_calls_total 3\n"
        );
    }

    #[test]
    fn gauges_histograms_and_labels_pass_through() {
        let om = "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"x\"} 2\n\
                  # HELP h_seconds Latency.\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\n\
                  h_seconds_sum 0.5\nh_seconds_count 2\nh_seconds_bucket{le=\"0.1\"} 1\n\
                  h_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_created 12.0\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"x\"} 2\n\
             # HELP h_seconds Latency.\n# TYPE h_seconds histogram\n\
             h_seconds_sum 0.5\nh_seconds_count 2\nh_seconds_bucket{le=\"0.1\"} 1\n\
             h_seconds_bucket{le=\"+Inf\"} 2\n"
        );
    }

    #[test]
    fn exemplars_timestamps_info_and_unknown() {
        let om = "# TYPE c counter\n\
                  c_total{path=\"/a } # b\"} 7 # {trace_id=\"abc\"} 1.0 1.5\n\
                  # TYPE t gauge\nt 1 1700000000.25\n\
                  # TYPE v info\nv_info{version=\"1\"} 1\n\
                  # TYPE u unknown\nu 4\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# TYPE c_total counter\nc_total{path=\"/a } # b\"} 7\n\
             # TYPE t gauge\nt 1 1700000000250\n\
             # TYPE v_info gauge\nv_info{version=\"1\"} 1\n\
             # TYPE u untyped\nu 4\n"
        );
    }

    #[test]
    fn help_escapes_are_the_text_formats() {
        let om = "# HELP c Say \\\"hi\\\" \\\\ now.\n# TYPE c counter\nc_total 1\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP c_total Say \"hi\" \\\\ now.\n# TYPE c_total counter\nc_total 1\n"
        );
    }

    #[test]
    fn a_registry_converts_with_no_counter_left_without_total() {
        let mut r = Registry::default();
        let c: Family<Vec<(String, String)>, Counter> = Family::default();
        c.get_or_create(&vec![("tool".into(), "echo".into())]).inc();
        r.register("sb_tool_calls", "Tool calls", c);
        let g: Gauge = Gauge::default();
        g.set(5);
        r.register("sb_running", "Running", g);
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.05);
        h.observe(3.0);
        r.register("sb_duration_seconds", "Durations", h);
        let text = super::super::render(&r, super::super::Format::Text);
        assert!(
            text.contains("# TYPE sb_tool_calls_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("sb_tool_calls_total{tool=\"echo\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sb_running gauge\nsb_running 5\n"),
            "{text}"
        );
        assert!(
            text.contains("sb_duration_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sb_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("sb_duration_seconds_count 2\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut it = l.split(' ').skip(2);
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{l}");
            }
        }
        let om = super::super::render(&r, super::super::Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
