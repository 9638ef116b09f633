//! The table both views show: the order, the cells, and the plain text of `--once`.
use apptheus::http::{
    api::{Container, Containers, State},
    format,
};

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// CPU now, highest first.
    Cpu,
    /// Memory now, highest first.
    Memory,
    /// Container id, A to Z.
    Name,
    /// User, A to Z (the busiest first within a user).
    User,
}

impl Sort {
    /// The key that picks it in the live view.
    pub fn from_key(key: char) -> Option<Sort> {
        match key {
            'c' => Some(Sort::Cpu),
            'm' => Some(Sort::Memory),
            'n' => Some(Sort::Name),
            'u' => Some(Sort::User),
            _ => None,
        }
    }

    /// The column it sorts.
    pub fn column(self) -> usize {
        match self {
            Sort::Cpu => 5,
            Sort::Memory => 7,
            Sort::Name => 0,
            Sort::User => 1,
        }
    }
}

pub const HEADERS: [&str; 12] = [
    "CONTAINER",
    "USER",
    "JOB",
    "STATE",
    "AGE",
    "CPU",
    "CPU-TIME",
    "MEMORY",
    "PEAK",
    "LIMIT",
    "PROCS",
    "EXIT",
];
/// Right-aligned columns.
pub const NUMERIC: [bool; 12] = [
    false, false, false, false, true, true, true, true, true, true, true, true,
];

/// A missing value: one ASCII word, for scripts.
const NONE: &str = "-";

/// `containers` in the order `by` asks for; the id breaks ties.
pub fn sort(containers: &mut [Container], by: Sort) {
    let cpu = |c: &Container| c.cpu_cores.unwrap_or(-1.0);
    let memory = |c: &Container| c.memory_bytes.map_or(-1, |m| m as i128);
    containers.sort_by(|a, b| {
        match by {
            Sort::Cpu => cpu(b).total_cmp(&cpu(a)),
            Sort::Memory => memory(b).cmp(&memory(a)),
            Sort::Name => a.id.cmp(&b.id),
            Sort::User => a.user.cmp(&b.user).then(cpu(b).total_cmp(&cpu(a))),
        }
        .then_with(|| a.id.cmp(&b.id))
    });
}

/// A value as one word fit for a terminal: whitespace becomes `_` and control characters
/// (escape sequences a job id could carry into the administrator's terminal) `?`.
pub fn word(s: &str) -> String {
    if s.is_empty() {
        return NONE.into();
    }
    s.chars()
        .map(|c| match c {
            c if c.is_whitespace() => '_',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// The cells of `c`'s row, at Unix time `now`.
pub fn cells(c: &Container, now: f64) -> [String; 12] {
    let or = |v: Option<String>| v.unwrap_or_else(|| NONE.into());
    let bytes = |b: Option<u64>| or(b.map(|b| format::bytes(b).replace(' ', "")));
    [
        word(&c.id),
        word(&c.user),
        word(c.job_id.as_deref().unwrap_or_default()),
        match c.state {
            State::Live => "live".into(),
            State::Ended => "ended".into(),
        },
        format::duration(now - c.start_time),
        or(c.cpu_cores.map(format::cores)),
        or(c.cpu_seconds.map(format::cpu_time)),
        bytes(c.memory_bytes),
        bytes(c.memory_peak_bytes),
        bytes(c.memory_limit_bytes),
        c.processes.to_string(),
        or(c.exit_code.map(|e| e.to_string())),
    ]
}

/// `--once`: a header line, then one line per container, columns aligned with at least two
/// spaces between them; every value one word, `-` where there is none.
pub fn plain(view: &Containers, by: Sort) -> String {
    let mut containers = view.containers.clone();
    sort(&mut containers, by);
    let rows: Vec<[String; 12]> = containers.iter().map(|c| cells(c, view.time)).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADERS.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if NUMERIC[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, user: &str, cpu: Option<f64>, mem: u64) -> Container {
        Container {
            id: id.into(),
            user: user.into(),
            uid: "1000".into(),
            scheduler: None,
            job_id: None,
            state: State::Live,
            start_time: 0.0,
            end_time: None,
            cpu_cores: cpu,
            cpu_seconds: Some(90.0),
            memory_bytes: Some(mem),
            memory_peak_bytes: Some(mem),
            memory_limit_bytes: None,
            processes: 1,
            exit_code: None,
            history: None,
            summary: None,
        }
    }

    fn view(containers: Vec<Container>) -> Containers {
        Containers {
            time: 65.0,
            host: "n".into(),
            version: "0".into(),
            interval_seconds: 0.5,
            step_seconds: 5.0,
            points: 120,
            containers,
        }
    }

    #[test]
    fn orders() {
        let all = vec![
            container("b", "zoe", Some(0.5), 300),
            container("a", "zoe", None, 100),
            container("c", "amy", Some(2.0), 200),
        ];
        let ids = |by| {
            let mut v = all.clone();
            sort(&mut v, by);
            v.iter().map(|c| c.id.clone()).collect::<Vec<_>>().join("")
        };
        assert_eq!(ids(Sort::Cpu), "cba");
        assert_eq!(ids(Sort::Memory), "bca");
        assert_eq!(ids(Sort::Name), "abc");
        assert_eq!(ids(Sort::User), "cba");
    }

    #[test]
    fn once_is_aligned_words() {
        let mut evil = container("x_1", "bob", Some(1.0), 1 << 30);
        evil.job_id = Some("a b\u{1b}[2J".into());
        evil.state = State::Ended;
        evil.exit_code = Some(137);
        let text = plain(
            &view(vec![
                container("apptheus-exec_42", "alice", Some(1.98), 1536),
                evil,
            ]),
            Sort::Cpu,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "CONTAINER         USER   JOB      STATE    AGE   CPU  CPU-TIME  MEMORY    PEAK  LIMIT  PROCS  EXIT",
                "apptheus-exec_42  alice  -        live   1m05s  1.98     1m30s  1.5KiB  1.5KiB      -      1     -",
                "x_1               bob    a_b?[2J  ended  1m05s  1.00     1m30s  1.0GiB  1.0GiB      -      1   137",
            ]
        );
        for l in &lines[1..] {
            assert_eq!(l.split_whitespace().count(), HEADERS.len(), "{l}");
        }
    }
}
