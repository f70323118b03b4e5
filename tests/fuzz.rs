//! Hostile input, bounded: proptest feeds generated input to the fuzz targets of
//! `herald::fuzz` (src/fuzz.rs) — the WebSocket client-frame parser, the send body
//! (extractor, DTOs, validation, the whole server) and query parameters. Each target must
//! never panic and must answer bad input with a `4xx` JSON error, never a `5xx`.
//!
//! The strategies build *near-valid* input — the right field names with values of the wrong
//! type, size or format, then damaged bytes — because random bytes rarely get past the
//! first JSON parse. [`CASES`] per target keeps CI fast; `fuzz/` runs the same targets
//! without a bound under cargo-fuzz. Each test prints its figures (`FUZZ …`).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

/// Generated cases per target.
const CASES: u32 = 2_000;

fn run<T: std::fmt::Debug>(name: &str, strategy: impl Strategy<Value = T>, target: impl Fn(&T)) {
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input))).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            TestCaseError::fail(msg)
        })
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "FUZZ {name}: cases={CASES} failures=0 secs={:.1}",
        started.elapsed().as_secs_f64()
    );
}

/// The server's answers so far for `routes` (shared by the tests of this process).
fn print_answers(name: &str, routes: &[&str]) {
    let answers: Vec<String> = herald::fuzz::answered()
        .into_iter()
        .filter(|(route, _, _)| routes.contains(&route.as_str()))
        .map(|(route, status, n)| format!("{route}:{status}={n}"))
        .collect();
    eprintln!("FUZZ {name} answers: {}", answers.join(" "));
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

/// Strings a field may meet: empty, blank, plain, unicode, control characters, very long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_-]{1,12}",
        1 => Just(String::new()),
        1 => Just("   ".to_owned()),
        1 => "\\PC{0,40}",
        1 => "[\\x00-\\x1f\\u{7f}\"\\\\]{1,8}",
        1 => "\\PC{0,8}".prop_map(|s| format!("{s}\u{0}{s}")),
        1 => (1usize..5_000).prop_map(|n| "é".repeat(n)),
        1 => Just("x".repeat(70_000)),
    ]
}

/// Numbers at the edges.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// RFC 3339 and things that look like it.
fn timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("2026-11-29T09:30:00Z")),
        Just(json!("2026-11-29T09:30:00.123+08:00")),
        Just(json!("1970-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("-0001-01-01T00:00:00Z")),
        Just(json!("2026-02-30T25:61:61Z")),
        Just(json!("2026-11-29 09:30")),
        (1900i32..10_000, 0u32..14, 0u32..33, 0u32..25, -30i32..30).prop_map(
            |(y, mo, d, h, off)| json!(format!("{y:04}-{mo:02}-{d:02}T{h:02}:00:00{off:+03}:00"))
        ),
        number(),
    ]
}

fn user_ids() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(
            prop_oneof![
                "u[0-9]{1,3}".prop_map(Value::String),
                text().prop_map(Value::String),
                number(),
                Just(Value::Null),
            ],
            0..8
        )
        .prop_map(Value::Array),
        // Just over the limit of 10,000 receivers.
        Just(Value::Array((0..10_001).map(|i| json!(i)).collect())),
        scalar(),
    ]
}

fn channel_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop_oneof![Just("websocket"), Just("sms"), Just("mail"), Just("WEBSOCKET")]
            .prop_map(|s| json!(s)),
        1 => text().prop_map(Value::String),
        1 => scalar(),
    ]
}

fn routing() -> impl Strategy<Value = Value> {
    let step = (
        channel_name(),
        prop_oneof![
            Just(None),
            Just(Some(json!("2m"))),
            Just(Some(json!("0s"))),
            Just(Some(json!("31d"))),
            Just(Some(json!("99999999999999h"))),
            text().prop_map(|s| Some(Value::String(s))),
            number().prop_map(Some),
        ],
        prop::option::of(text()),
    )
        .prop_map(|(channel, wait, extra)| {
            let mut step = json!({ "channel": channel });
            if let Some(wait) = wait {
                step["wait"] = wait;
            }
            if let Some(extra) = extra {
                step[extra] = json!(1);
            }
            step
        });
    prop_oneof![
        3 => (
            prop_oneof![Just(json!("all")), Just(json!("failover")), scalar()],
            prop::collection::vec(step, 0..6),
        )
            .prop_map(|(policy, steps)| json!({"policy": policy, "steps": steps})),
        1 => any_json(),
    ]
}

/// A value for a `SendRequest` / `SeedSendRequest` field: usually the right kind, often not.
fn send_field(key: &'static str) -> BoxedStrategy<Value> {
    let typed: BoxedStrategy<Value> = match key {
        "title" | "content" | "sender" => text().prop_map(Value::String).boxed(),
        "type" => number().boxed(),
        "receivers" | "receiver" => user_ids().boxed(),
        "channels" => prop::collection::vec(channel_name(), 0..5)
            .prop_map(Value::Array)
            .boxed(),
        "template" => prop_oneof![
            Just(json!("report_ready")),
            Just(json!("../../etc/passwd")),
            text().prop_map(Value::String),
        ]
        .boxed(),
        "data" => prop_oneof![
            Just(
                json!({"patient_name": "李雷", "report_type": "CT", "report_id": "R-1",
                        "hospital": "H", "ready_at": "now", "url": "https://e.com/r"})
            ),
            any_json(),
        ]
        .boxed(),
        "routing" => routing().boxed(),
        "sendAt" | "expiresAt" => timestamp().boxed(),
        _ => any_json().boxed(),
    };
    prop_oneof![4 => typed, 1 => any_json()].boxed()
}

const SEND_KEYS: [&str; 13] = [
    "title",
    "content",
    "type",
    "receivers",
    "channels",
    "template",
    "data",
    "sender",
    "routing",
    "sendAt",
    "expiresAt",
    "receiver",
    "id",
];

/// A valid send, then up to four edits: a field set to a [`send_field`] value (often of
/// the wrong type, size or format) or removed.
fn send_object() -> impl Strategy<Value = Value> {
    let base = (
        "[A-Za-z0-9 ]{1,20}",
        "\\PC{0,60}",
        prop::collection::vec("u[0-9]{1,2}", 1..4),
        prop::option::of(prop_oneof![
            Just(json!(["websocket"])),
            Just(json!(["websocket", "sms"])),
        ]),
    )
        .prop_map(|(title, content, receivers, channels)| {
            let mut v = json!({"title": title, "content": content, "receivers": receivers});
            if let Some(channels) = channels {
                v["channels"] = channels;
            }
            v
        });
    let edit = prop::sample::select(&SEND_KEYS[..])
        .prop_flat_map(|k| (Just(k), prop::option::weighted(0.85, send_field(k))));
    (base, prop::collection::vec(edit, 0..4)).prop_map(|(mut v, edits)| {
        let obj = v.as_object_mut().expect("an object");
        for (key, value) in edits {
            match value {
                Some(value) => obj.insert(key.to_owned(), value),
                None => obj.remove(key),
            };
        }
        v
    })
}

/// Damage to serialized JSON.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(usize),
    Insert(usize, u8),
    Flip(usize),
    DuplicateFirstKey,
    WrapInArray,
    LeadingBom,
    Empty,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        10 => Just(Damage::None),
        2 => any::<usize>().prop_map(Damage::Truncate),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        2 => any::<usize>().prop_map(Damage::Flip),
        1 => Just(Damage::DuplicateFirstKey),
        1 => Just(Damage::WrapInArray),
        1 => Just(Damage::LeadingBom),
        1 => Just(Damage::Empty),
    ]
}

fn apply(value: &Value, damage: &Damage) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("serialize");
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *damage {
        Damage::None => {}
        Damage::Truncate(i) => bytes.truncate(at(i, bytes.len())),
        Damage::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, b);
        }
        Damage::Flip(i) => {
            if !bytes.is_empty() {
                let i = at(i, bytes.len());
                bytes[i] ^= 0x20;
            }
        }
        Damage::DuplicateFirstKey => {
            if let Some(obj) = value.as_object() {
                if let Some((k, v)) = obj.iter().next() {
                    let dup = format!("{}:{},", json!(k), json!(v));
                    bytes.splice(1..1, dup.into_bytes());
                }
            }
        }
        Damage::WrapInArray => {
            bytes.insert(0, b'[');
            bytes.push(b']');
        }
        Damage::LeadingBom => {
            bytes.splice(0..0, [0xEF, 0xBB, 0xBF]);
        }
        Damage::Empty => bytes.clear(),
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

fn ws_frame_input() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        prop_oneof![
            4 => prop_oneof![Just("ack"), Just("read"), Just("ping"), Just("pong"), Just("ACK")]
                .prop_map(|s| json!(s)),
            1 => scalar(),
        ],
        prop::option::weighted(
            0.8,
            prop_oneof![
                "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
                    .prop_map(Value::String),
                (60usize..70).prop_map(|n| json!("i".repeat(n))),
                scalar(),
                any_json(),
            ],
        ),
        prop::option::weighted(0.1, ("[a-z]{1,6}", any_json())),
    )
        .prop_map(|(ty, id, extra)| {
            let mut obj = Map::new();
            obj.insert("type".into(), ty);
            if let Some(id) = id {
                obj.insert("id".into(), id);
            }
            if let Some((k, v)) = extra {
                obj.insert(k, v);
            }
            Value::Object(obj)
        });
    prop_oneof![
        6 => (frame, damage()).prop_map(|(v, d)| apply(&v, &d)),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).expect("serialize")),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

#[test]
fn ws_client_frames_never_panic_and_errors_are_frames() {
    run("ws_frame", ws_frame_input(), |data| {
        herald::fuzz::ws_frame(data)
    });
}

fn send_body_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (send_object(), damage()).prop_map(|(v, d)| apply(&v, &d)),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).expect("serialize")),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

#[test]
fn send_bodies_are_accepted_or_rejected_with_a_4xx() {
    run("send_body", send_body_input(), |data| {
        herald::fuzz::send_body(data)
    });
    print_answers(
        "send_body",
        &["POST /api/v1/messages", "POST /message/sendMessage"],
    );
}

fn query_input() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => prop_oneof![
            Just("page"), Just("size"), Just("pageNum"), Just("pageSize"), Just("status"),
            Just("receiver"), Just("sender"), Just("type"), Just("channel"), Just("id"),
            Just("token"), Just("window"), Just("from"),
        ]
        .prop_map(str::to_owned),
        1 => "[a-zA-Z%]{0,6}",
    ];
    let value = prop_oneof![
        Just("1".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("4294967296".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just(" 5 ".to_owned()),
        Just("1e3".to_owned()),
        prop_oneof![
            Just("pending"),
            Just("sent"),
            Just("delivered"),
            Just("read"),
            Just("failed"),
            Just("undelivered"),
            Just("all"),
            Just("websocket"),
        ]
        .prop_map(str::to_owned),
        Just("%zz".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%00".to_owned()),
        Just("a+b%20c".to_owned()),
        "[ -~]{0,20}",
        "\\PC{0,10}",
        Just("r".repeat(300)),
    ];
    prop_oneof![
        6 => prop::collection::vec(
            (key, prop::option::weighted(0.9, value), prop::bool::weighted(0.1)),
            0..6,
        )
        .prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(k, v, bare)| match (v, bare) {
                    (Some(v), false) => format!("{k}={v}"),
                    _ => k,
                })
                .collect::<Vec<_>>()
                .join("&")
        }),
        1 => "\\PC{0,40}",
        1 => "[ -~]{0,60}",
    ]
}

#[test]
fn query_parameters_are_read_or_rejected_with_a_4xx() {
    run("query", query_input(), |q| herald::fuzz::query(q));
    print_answers(
        "query",
        &[
            "GET /api/v1/messages",
            "GET /message/getMessagePage",
            "GET /api/v1/inbox",
            "GET /api/v1/stats/deliveries",
            "DELETE /message/deleteMessageById",
            "GET /websocket",
        ],
    );
}
