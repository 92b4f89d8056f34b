//! How far a Spark application has got, from its driver's REST API
//! (`GET /api/v1/applications/{id}/jobs`): the tasks of its jobs so far.
//! Plain HTTP/1.0 on the driver's UI port; a driver that does not answer
//! (starting, ending, its UI off) just gives no figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read.
const MAX_ANSWER: u64 = 8 * 1024 * 1024;

/// Tasks done and known, over the application's jobs so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tasks {
    /// Completed or skipped.
    pub done: u64,
    /// Of all the jobs started so far.
    pub total: u64,
    /// Jobs started so far.
    pub jobs: u64,
}

/// The application's tasks, asked of the driver's UI on `port`.
pub fn tasks(port: u16, app_id: &str) -> Option<Tasks> {
    let body = get(port, &format!("/api/v1/applications/{app_id}/jobs"))?;
    parse_jobs(&body)
}

/// The tasks of the jobs in the REST API's answer `body`.
pub fn parse_jobs(body: &str) -> Option<Tasks> {
    let jobs: Vec<serde_json::Value> = serde_json::from_str(body).ok()?;
    let field = |job: &serde_json::Value, name: &str| job.get(name).and_then(|v| v.as_u64());
    let mut tasks = Tasks::default();
    for job in &jobs {
        let total = field(job, "numTasks").unwrap_or(0);
        let done = field(job, "numCompletedTasks").unwrap_or(0)
            + field(job, "numSkippedTasks").unwrap_or(0);
        tasks.total += total;
        tasks.done += done.min(total);
        tasks.jobs += 1;
    }
    Some(tasks)
}

/// The body of `GET path` on 127.0.0.1:`port`, when it answers 200.
fn get(port: u16, path: &str) -> Option<String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_tasks_are_summed_skipped_ones_as_done() {
        let body = r#"[{"jobId":1,"status":"RUNNING","numTasks":8,"numCompletedTasks":3,"numSkippedTasks":0},
                       {"jobId":0,"status":"SUCCEEDED","numTasks":4,"numCompletedTasks":2,"numSkippedTasks":2}]"#;
        assert_eq!(
            parse_jobs(body),
            Some(Tasks {
                done: 7,
                total: 12,
                jobs: 2
            })
        );
        assert_eq!(parse_jobs("not json"), None);
    }

    #[test]
    fn a_driver_that_answers_is_read_and_one_that_does_not_gives_nothing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = socket.read(&mut request).unwrap();
            let asked = String::from_utf8_lossy(&request[..n]).into_owned();
            let body = r#"[{"numTasks":2,"numCompletedTasks":1}]"#;
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
            socket.write_all(answer.as_bytes()).unwrap();
            asked
        });
        let got = tasks(port, "app-1").unwrap();
        assert_eq!((got.done, got.total), (1, 2));
        let asked = server.join().unwrap();
        assert!(asked.starts_with("GET /api/v1/applications/app-1/jobs HTTP/1.0"));
        assert_eq!(tasks(port, "app-1"), None);
    }
}
