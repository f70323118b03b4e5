//! A real SMTP server on loopback for tests, and a small parser for what it received.
//!
//! Enabled by the crate feature `testing`. [`TestSmtp::start`] binds `127.0.0.1:0` and
//! serves on its own thread (with its own Tokio runtime), so it works from `#[test]` and
//! `#[tokio::test]` alike and never competes with the code under test for the runtime. It
//! speaks enough RFC 5321 for a real client: EHLO/HELO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA
//! (with dot-unstuffing), RSET, NOOP, VRFY, QUIT. It offers neither STARTTLS nor TLS, so
//! point an `email.smtp` instance at it with `tls = "none"` ([`TestSmtp::channel_config`]).
//!
//! ```no_run
//! # async fn demo() {
//! use herald_channel_email::testing::TestSmtp;
//! use std::time::Duration;
//!
//! let smtp = TestSmtp::start();
//! smtp.script_data_replies([(451, "4.3.0 try later".to_owned())]); // first DATA fails
//! smtp.reject_rcpt("gone@example.com", 550, "5.1.1 user unknown");
//! // … configure `email.smtp` with `smtp.channel_config()` and send …
//! let mail = smtp.wait_for(1, Duration::from_secs(5)).await;
//! assert_eq!(mail[0].header("Subject").as_deref(), Some("Report ready"));
//! assert!(mail[0].html_part().unwrap().contains("<b>42</b>"));
//! # }
//! ```
//!
//! Dropping the [`TestSmtp`] stops the server and closes its connections.
//!
//! The crate's own tests turn the feature on through a dev-dependency on the crate itself;
//! the server's `tests/email.rs` through its own dev-dependency.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// Longest command line accepted (RFC 5321 asks for 512; be lenient).
const MAX_LINE: u64 = 64 * 1024;
/// Largest message accepted; larger ones get `552`.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// The name the server gives in its greeting.
const SERVER_NAME: &str = "herald-test-smtp";

/// One message the server accepted (the end of DATA was answered with a 2xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub from: String,
    /// The envelope recipients (`RCPT TO`) that were accepted, without angle brackets.
    pub to: Vec<String>,
    /// The message as sent after DATA, dot-unstuffed, without the final `.` line.
    pub data: String,
    /// The user the session authenticated as, if it did.
    pub auth_user: Option<String>,
    /// The EHLO/HELO name the client gave.
    pub helo: String,
}

#[derive(Default)]
struct State {
    received: Vec<ReceivedMail>,
    data_replies: VecDeque<(u16, String)>,
    /// Lower-cased address → reply.
    rcpt_rejects: HashMap<String, (u16, String)>,
    auth: Option<(String, String)>,
    data_attempts: usize,
    connections: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a message is received.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug in the test server itself; the state
        // stays usable for the assertions that follow.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A recording SMTP server on `127.0.0.1`; see the [module docs](self).
pub struct TestSmtp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it stops the accept loop; the server's runtime then drops every session.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for TestSmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSmtp")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestSmtp {
    /// Binds `127.0.0.1:0` and starts serving on a thread of its own.
    pub fn start() -> TestSmtp {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("the test SMTP server can bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("the test SMTP listener can be made non-blocking");
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let server = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("test-smtp".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the test SMTP server can build its runtime");
                runtime.block_on(accept_loop(listener, server, stopped));
            })
            .expect("the test SMTP server thread can be spawned");
        TestSmtp {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration table (as JSON) of an `email.smtp` instance that sends here:
    /// `host`, `port`, `tls = "none"`, `from = "Herald <herald@example.com>"`,
    /// `timeout = "5s"`. Add keys (`username`, `password`, …) as needed.
    pub fn channel_config(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.addr.ip().to_string(),
            "port": self.addr.port(),
            "tls": "none",
            "from": "Herald <herald@example.com>",
            "timeout": "5s",
        })
    }

    /// Replies for the next end-of-DATA, consumed in order (one per DATA that reaches the
    /// end of its data); then `250`. A 2xx reply accepts (and records) the message; any
    /// other code rejects it.
    pub fn script_data_replies(&self, replies: impl IntoIterator<Item = (u16, String)>) {
        self.shared.lock().data_replies.extend(replies);
    }

    /// Answer `RCPT TO` of `address` (compared case-insensitively) with `code` and `text`,
    /// e.g. `550`, `"5.1.1 user unknown"`. Lasts for the server's lifetime.
    pub fn reject_rcpt(&self, address: &str, code: u16, text: &str) {
        self.shared
            .lock()
            .rcpt_rejects
            .insert(address.to_ascii_lowercase(), (code, text.to_owned()));
    }

    /// From now on, advertise `AUTH PLAIN LOGIN`, refuse `MAIL` without authentication
    /// (`530`) and accept only these credentials (`535` otherwise). Without it, AUTH is not
    /// advertised but any credentials are accepted.
    pub fn require_auth(&self, user: &str, password: &str) {
        self.shared.lock().auth = Some((user.to_owned(), password.to_owned()));
    }

    /// Every message accepted so far, in order.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.lock().received.clone()
    }

    /// `DATA` commands seen so far, including rejected ones.
    pub fn data_attempts(&self) -> usize {
        self.shared.lock().data_attempts
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Waits until at least `n` messages were received or `deadline` has passed, and returns
    /// what was received (check its length). Wakes on every received message; never sleeps
    /// longer than 50 ms at a time, so it also works under a paused Tokio clock.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<ReceivedMail> {
        let until = Instant::now() + deadline;
        loop {
            let mut notified = std::pin::pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            let received = self.received();
            let now = Instant::now();
            if received.len() >= n || now >= until {
                return received;
            }
            let nap = (until - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    // Replies are single writes; don't let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    shared.lock().connections += 1;
                    tokio::spawn(Session::new(stream, Arc::clone(&shared)).run());
                }
            }
        }
    }
}

/// One SMTP connection.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    helo: Option<String>,
    auth_user: Option<String>,
    /// The current transaction.
    from: Option<String>,
    to: Vec<String>,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        let (reader, writer) = stream.into_split();
        Self {
            reader: BufReader::new(reader),
            writer,
            shared,
            helo: None,
            auth_user: None,
            from: None,
            to: Vec::new(),
        }
    }

    /// Serves until QUIT or the client goes away; I/O errors just end the session.
    async fn run(mut self) {
        let _ = self.serve().await;
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        self.reply(220, &format!("{SERVER_NAME} ESMTP ready"))
            .await?;
        loop {
            let Some(line) = self.read_line().await? else {
                return Ok(());
            };
            let (verb, arg) = match line.split_once(' ') {
                Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_owned()),
                None => (line.trim().to_ascii_uppercase(), String::new()),
            };
            match verb.as_str() {
                "EHLO" | "HELO" if arg.is_empty() => {
                    self.reply(501, "5.5.4 A domain name is required").await?
                }
                "EHLO" => {
                    self.helo = Some(arg);
                    self.reset();
                    let mut lines = vec![
                        format!("{SERVER_NAME} greets you"),
                        "8BITMIME".to_owned(),
                        "SMTPUTF8".to_owned(),
                        "ENHANCEDSTATUSCODES".to_owned(),
                    ];
                    if self.shared.lock().auth.is_some() {
                        lines.push("AUTH PLAIN LOGIN".to_owned());
                    }
                    lines.push(format!("SIZE {MAX_MESSAGE}"));
                    self.reply_lines(250, &lines).await?;
                }
                "HELO" => {
                    self.helo = Some(arg);
                    self.reset();
                    self.reply(250, SERVER_NAME).await?;
                }
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => self.mail(&arg).await?,
                "RCPT" => self.rcpt(&arg).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply(250, "2.0.0 Ok").await?;
                }
                "NOOP" => self.reply(250, "2.0.0 Ok").await?,
                "VRFY" => {
                    self.reply(252, "2.5.0 Cannot verify, but will accept")
                        .await?
                }
                "QUIT" => {
                    self.reply(221, "2.0.0 Bye").await?;
                    return Ok(());
                }
                "STARTTLS" => self.reply(454, "4.7.0 TLS not available").await?,
                _ => self.reply(500, "5.5.2 Command not recognized").await?,
            }
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }

    async fn auth(&mut self, arg: &str) -> std::io::Result<()> {
        if self.helo.is_none() {
            return self.reply(503, "5.5.1 Send EHLO first").await;
        }
        if self.auth_user.is_some() {
            return self.reply(503, "5.5.1 Already authenticated").await;
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r,
                    None => self.challenge("").await?,
                };
                decode_b64(&response).and_then(|plain| {
                    // authzid NUL authcid NUL password
                    let mut fields = plain.split('\0');
                    let _authzid = fields.next()?;
                    let user = fields.next()?.to_owned();
                    let password = fields.next()?.to_owned();
                    Some((user, password))
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(u) => u,
                    None => self.challenge("VXNlcm5hbWU6").await?, // "Username:"
                };
                let password = self.challenge("UGFzc3dvcmQ6").await?; // "Password:"
                decode_b64(&user).zip(decode_b64(&password))
            }
            _ => {
                return self
                    .reply(504, "5.5.4 Unrecognized authentication type")
                    .await
            }
        };
        let Some((user, password)) = credentials else {
            return self.reply(501, "5.5.2 Cannot decode response").await;
        };
        let expected = self.shared.lock().auth.clone();
        match expected {
            Some((u, p)) if u != user || p != password => {
                self.reply(535, "5.7.8 Authentication credentials invalid")
                    .await
            }
            _ => {
                self.auth_user = Some(user);
                self.reply(235, "2.7.0 Authentication successful").await
            }
        }
    }

    /// Sends a `334` challenge and reads the client's answer (`*` cancels: empty answer).
    async fn challenge(&mut self, text: &str) -> std::io::Result<String> {
        self.reply(334, text).await?;
        let answer = self
            .read_line()
            .await?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        Ok(if answer.trim() == "*" {
            String::new()
        } else {
            answer
        })
    }

    async fn mail(&mut self, arg: &str) -> std::io::Result<()> {
        if self.helo.is_none() {
            return self.reply(503, "5.5.1 Send EHLO/HELO first").await;
        }
        let auth_required = self.shared.lock().auth.is_some();
        if auth_required && self.auth_user.is_none() {
            return self.reply(530, "5.7.0 Authentication required").await;
        }
        if self.from.is_some() {
            return self.reply(503, "5.5.1 Nested MAIL command").await;
        }
        let Some(path) = path_arg(arg, "FROM:") else {
            return self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        self.from = Some(path);
        self.to.clear();
        self.reply(250, "2.1.0 Ok").await
    }

    async fn rcpt(&mut self, arg: &str) -> std::io::Result<()> {
        if self.from.is_none() {
            return self.reply(503, "5.5.1 Need MAIL before RCPT").await;
        }
        let Some(path) = path_arg(arg, "TO:").filter(|p| !p.is_empty()) else {
            return self.reply(501, "5.5.4 Syntax: RCPT TO:<address>").await;
        };
        let reject = self
            .shared
            .lock()
            .rcpt_rejects
            .get(&path.to_ascii_lowercase())
            .cloned();
        match reject {
            Some((code, text)) => self.reply(code, &text).await,
            None => {
                self.to.push(path);
                self.reply(250, "2.1.5 Ok").await
            }
        }
    }

    async fn data(&mut self) -> std::io::Result<()> {
        self.shared.lock().data_attempts += 1;
        let Some(from) = self.from.clone() else {
            return self.reply(503, "5.5.1 Need MAIL command").await;
        };
        if self.to.is_empty() {
            return self.reply(554, "5.5.1 No valid recipients").await;
        }
        self.reply(354, "End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // Dot-unstuffing (RFC 5321 §4.5.2).
            let content = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + content.len() > MAX_MESSAGE {
                too_big = true;
            } else {
                data.extend_from_slice(content);
            }
        }
        let to = std::mem::take(&mut self.to);
        self.from = None;
        if too_big {
            return self.reply(552, "5.3.4 Message too big").await;
        }
        let (code, text) = {
            let mut state = self.shared.lock();
            let (code, text) = state
                .data_replies
                .pop_front()
                .unwrap_or((250, "2.0.0 Ok: queued".to_owned()));
            if (200..300).contains(&code) {
                state.received.push(ReceivedMail {
                    from,
                    to,
                    data: String::from_utf8_lossy(&data).into_owned(),
                    auth_user: self.auth_user.clone(),
                    helo: self.helo.clone().unwrap_or_default(),
                });
            }
            (code, text)
        };
        // Recorded before the reply: a client that saw 250 finds the message in `received`.
        self.shared.changed.notify_waiters();
        self.reply(code, &text).await
    }

    /// One command line without its line ending; `None` at end of stream. Too long a line
    /// ends the session.
    async fn read_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            self.reply(500, "5.5.6 Line too long").await?;
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let line = String::from_utf8_lossy(&line);
        Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
    }

    async fn reply(&mut self, code: u16, text: &str) -> std::io::Result<()> {
        self.writer
            .write_all(format!("{code} {text}\r\n").as_bytes())
            .await
    }

    async fn reply_lines(&mut self, code: u16, lines: &[String]) -> std::io::Result<()> {
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&format!("{code}{sep}{line}\r\n"));
        }
        self.writer.write_all(out.as_bytes()).await
    }
}

/// The path of `FROM:<a@b> PARAMS` / `TO:<a@b>` without brackets (`""` for `<>`).
fn path_arg(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        Some(inner[..end].to_owned())
    } else {
        rest.split_whitespace().next().map(str::to_owned)
    }
}

fn decode_b64(s: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

// ---------------------------------------------------------------------------------------
// Reading a received message
// ---------------------------------------------------------------------------------------

/// One leaf part of a received message, its body decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// The lower-cased media type without parameters (`text/plain`).
    pub mime_type: String,
    /// The part's own headers, unfolded, values as sent.
    pub headers: Vec<(String, String)>,
    /// The body after Content-Transfer-Encoding decoding (base64, quoted-printable), as
    /// UTF-8, line breaks normalised to `\n`, trailing line breaks removed.
    pub body: String,
}

impl ReceivedMail {
    /// The message's top-level headers in order, unfolded, values as sent (not decoded).
    pub fn headers(&self) -> Vec<(String, String)> {
        parse_headers(split_head(&self.data).0)
    }

    /// The first header called `name` (case-insensitive), with RFC 2047 encoded words
    /// decoded (`=?utf-8?b?…?=` → UTF-8).
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers(), name).map(decode_encoded_words)
    }

    /// The top-level media type, lower-cased, without parameters (`multipart/alternative`).
    pub fn mime_type(&self) -> Option<String> {
        self.header("Content-Type").map(|ct| media_type(&ct))
    }

    /// Every leaf part, in order (one for a single-part message).
    pub fn parts(&self) -> Vec<MimePart> {
        let (head, body) = split_head(&self.data);
        leaf_parts(parse_headers(head), body)
    }

    /// The decoded body of the first `text/plain` part.
    pub fn text_part(&self) -> Option<String> {
        self.part_of_type("text/plain")
    }

    /// The decoded body of the first `text/html` part.
    pub fn html_part(&self) -> Option<String> {
        self.part_of_type("text/html")
    }

    fn part_of_type(&self, mime_type: &str) -> Option<String> {
        self.parts()
            .into_iter()
            .find(|p| p.mime_type == mime_type)
            .map(|p| p.body)
    }
}

/// Header block and body, split at the first empty line.
fn split_head(raw: &str) -> (&str, &str) {
    if let Some(body) = raw.strip_prefix("\r\n").or_else(|| raw.strip_prefix('\n')) {
        return ("", body);
    }
    match (raw.find("\r\n\r\n"), raw.find("\n\n")) {
        (Some(i), Some(j)) if j + 1 < i => (&raw[..j], &raw[j + 2..]),
        (Some(i), _) => (&raw[..i], &raw[i + 4..]),
        (None, Some(j)) => (&raw[..j], &raw[j + 2..]),
        (None, None) => (raw, ""),
    }
}

fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            // Unfold: the line break goes, the whitespace stays.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn header_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|param| {
        let (n, v) = param.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn leaf_parts(headers: Vec<(String, String)>, body: &str) -> Vec<MimePart> {
    let content_type = header_value(&headers, "Content-Type")
        .unwrap_or("text/plain")
        .to_owned();
    let mime_type = media_type(&content_type);
    if !mime_type.starts_with("multipart/") {
        let body = decode_body(&headers, body);
        return vec![MimePart {
            mime_type,
            headers,
            body,
        }];
    }
    let Some(boundary) = header_param(&content_type, "boundary") else {
        return Vec::new();
    };
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut current: Option<String> = None;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare == delimiter || bare == closing {
            if let Some(raw) = current.take() {
                // The line break before a delimiter belongs to the delimiter.
                let raw = raw
                    .strip_suffix("\r\n")
                    .or_else(|| raw.strip_suffix('\n'))
                    .unwrap_or(&raw);
                let (head, body) = split_head(raw);
                parts.extend(leaf_parts(parse_headers(head), body));
            }
            if bare == closing {
                break;
            }
            current = Some(String::new());
        } else if let Some(raw) = current.as_mut() {
            raw.push_str(line);
        }
    }
    parts
}

fn decode_body(headers: &[(String, String)], body: &str) -> String {
    let encoding = header_value(headers, "Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let decoded = match encoding.as_str() {
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(compact) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(_) => body.to_owned(),
            }
        }
        "quoted-printable" => {
            match quoted_printable::decode(body, quoted_printable::ParseMode::Robust) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(_) => body.to_owned(),
            }
        }
        _ => body.to_owned(),
    };
    decoded
        .replace("\r\n", "\n")
        .trim_end_matches('\n')
        .to_owned()
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`); whitespace between two adjacent
/// encoded words is dropped. Charsets other than UTF-8/ASCII are decoded as UTF-8 anyway.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        match decode_word(&rest[start + 2..]) {
            Some((decoded, used)) => {
                if !(after_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &rest[start + 2 + used..];
                after_word = true;
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `charset?E?text?=` (after the `=?`) → (decoded text, bytes used).
fn decode_word(s: &str) -> Option<(String, usize)> {
    let (charset, rest) = s.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let text = &rest[..end];
    if charset.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "Q" | "q" => {
            let mut bytes = Vec::new();
            let raw = text.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'_' => bytes.push(b' '),
                    b'=' => {
                        let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
                        bytes.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    b => bytes.push(b),
                }
                i += 1;
            }
            bytes
        }
        _ => return None,
    };
    let used = charset.len() + 1 + encoding.len() + 1 + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(data: &str) -> ReceivedMail {
        ReceivedMail {
            from: "a@example.com".into(),
            to: vec!["b@example.com".into()],
            data: data.into(),
            auth_user: None,
            helo: "client".into(),
        }
    }

    #[test]
    fn encoded_words() {
        assert_eq!(decode_encoded_words("plain"), "plain");
        assert_eq!(
            decode_encoded_words("=?utf-8?b?5oql5ZGK?= =?utf-8?b?5bey55Sf5oiQ?="),
            "报告已生成"
        );
        assert_eq!(
            decode_encoded_words("Re: =?UTF-8?Q?caf=C3=A9_time?= ok"),
            "Re: café time ok"
        );
        assert_eq!(decode_encoded_words("a =? b"), "a =? b");
    }

    #[test]
    fn multipart_parsing() {
        let m = mail(
            "Subject: =?utf-8?b?5oql5ZGK?=\r\n\
             From: Herald\r\n <h@example.com>\r\n\
             Content-Type: multipart/alternative;\r\n boundary=\"XyZ\"\r\n\
             \r\n\
             --XyZ\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\
             \r\n\
             caf=C3=A9 =\r\nsoft\r\n\
             --XyZ\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             PGI+aGk8L2I+\r\n\
             --XyZ--\r\n",
        );
        assert_eq!(m.header("subject").as_deref(), Some("报告"));
        assert_eq!(m.header("From").as_deref(), Some("Herald <h@example.com>"));
        assert_eq!(m.mime_type().as_deref(), Some("multipart/alternative"));
        assert_eq!(m.text_part().as_deref(), Some("café soft"));
        assert_eq!(m.html_part().as_deref(), Some("<b>hi</b>"));
        assert_eq!(m.parts().len(), 2);
    }

    #[test]
    fn single_part() {
        let m = mail("Subject: hi\r\n\r\nline one\r\nline two\r\n");
        assert_eq!(m.text_part().as_deref(), Some("line one\nline two"));
        assert_eq!(m.html_part(), None);
    }

    #[test]
    fn paths() {
        assert_eq!(
            path_arg("FROM:<a@b.c> BODY=8BITMIME", "FROM:").as_deref(),
            Some("a@b.c")
        );
        assert_eq!(path_arg("from: <>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_arg("TO:x@y.z", "TO:").as_deref(), Some("x@y.z"));
        assert_eq!(path_arg("TOO", "TO:"), None);
    }
}
