//! Reading a process's `/metrics` page (the Prometheus text format), as the benchmarks do.

use std::collections::HashMap;

/// The `name{labels} value` samples of `http://127.0.0.1:<port>/metrics`; `None` when it does
/// not answer.
pub async fn scrape(http: &reqwest::Client, port: u16) -> Option<HashMap<String, f64>> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

/// The `q` quantile of the histogram `name` over what was observed between two scrapes: the
/// upper bound of the first bucket that holds it (`NaN` when the page has no such histogram).
pub fn histogram_quantile(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    name: &str,
    q: f64,
) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_that_reaches_it() {
        let page = |counts: [f64; 3]| -> HashMap<String, f64> {
            ["0.1", "0.5", "+Inf"]
                .iter()
                .zip(counts)
                .map(|(le, c)| (format!("x_seconds_bucket{{le=\"{le}\"}}"), c))
                .collect()
        };
        let (before, after) = (page([5.0, 5.0, 5.0]), page([95.0, 104.0, 105.0]));
        assert_eq!(histogram_quantile(&before, &after, "x_seconds", 0.5), 0.1);
        assert_eq!(histogram_quantile(&before, &after, "x_seconds", 0.99), 0.5);
    }
}
