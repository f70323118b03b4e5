//! Message templates: `templates/<name>/<family>.<part>.j2`, rendered with minijinja.
//!
//! Loaded once at start; a file that does not parse stops the start with its path and line.
//! At send time the API renders, for every requested channel, all parts of its family
//! (`email` → `subject`, `html`, `txt`) with the request's `data`, in strict mode: a
//! variable the template uses but `data` lacks is an error naming it. Escaping follows the
//! part: `html` is HTML-escaped, `json` is JSON-escaped (`{{ x }}` emits a JSON literal) and
//! must render to valid JSON; other parts are plain text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// The loaded templates. Cheap to share behind an `Arc`.
pub struct Templates {
    env: Environment<'static>,
    /// name → family → parts.
    index: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Template sources by key (`name/family.part.j2`), for error excerpts.
    sources: BTreeMap<String, String>,
    dir: PathBuf,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("dir", &self.dir)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Why the templates could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadName { path: PathBuf, reason: String },
    #[error("{}:{line}: syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// An unknown filter, test or function, found by a trial render without data.
    #[error("{}:{line}: {message}", path.display())]
    Unknown {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Why a template could not be rendered with the given data.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("`data` must be a JSON object")]
    DataNotObject,
    #[error("template `{0}` has no `{1}` parts")]
    Missing(String, String),
    #[error("template {file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Render {
        file: String,
        line: Option<usize>,
        message: String,
    },
    #[error("template {file}: the output is not valid JSON: {message}")]
    NotJson { file: String, message: String },
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn part_of(key: &str) -> &str {
    // `name/family.part.j2`
    key.rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".j2"))
        .and_then(|f| f.split_once('.'))
        .map(|(_, part)| part)
        .unwrap_or("")
}

impl Templates {
    pub fn empty() -> Templates {
        Templates {
            env: environment(),
            index: BTreeMap::new(),
            sources: BTreeMap::new(),
            dir: PathBuf::new(),
        }
    }

    /// Load every `<dir>/<name>/<family>.<part>.j2`. A missing `dir` gives no templates
    /// (the caller decides whether that is an error). Hidden entries and files not ending
    /// in `.j2` (a README) are ignored.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let mut t = Templates::empty();
        t.dir = dir.to_owned();
        if !dir.is_dir() {
            return Ok(t);
        }
        let read_dir = |p: &Path| -> Result<Vec<PathBuf>, TemplateError> {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
                .map_err(|source| TemplateError::Read {
                    path: p.to_owned(),
                    source,
                })?;
            entries.sort();
            Ok(entries)
        };
        let hidden = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        };
        for name_dir in read_dir(dir)? {
            if hidden(&name_dir) {
                continue;
            }
            if !name_dir.is_dir() {
                // A README is fine; a template file outside a template folder is a mistake.
                if name_dir.extension().is_some_and(|e| e == "j2") {
                    return Err(TemplateError::BadName {
                        path: name_dir,
                        reason: "a template file belongs in a template folder: \
                                 <dir>/<name>/<family>.<part>.j2"
                            .into(),
                    });
                }
                continue;
            }
            let name = name_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if !valid_word(&name) {
                return Err(TemplateError::BadName {
                    path: name_dir,
                    reason:
                        "a template directory name must be lowercase letters, digits, `_` or `-`"
                            .into(),
                });
            }
            for file in read_dir(&name_dir)? {
                let fname = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if hidden(&file) || !file.is_file() || !fname.ends_with(".j2") {
                    continue;
                }
                let stem = &fname[..fname.len() - 3];
                let Some((family, part)) = stem.split_once('.') else {
                    return Err(TemplateError::BadName {
                        path: file,
                        reason: "expected <family>.<part>.j2, e.g. email.subject.j2".into(),
                    });
                };
                if !valid_word(family) || !valid_word(part) {
                    return Err(TemplateError::BadName {
                        path: file,
                        reason:
                            "expected <family>.<part>.j2 with lowercase letters, digits, `_` or `-`"
                                .into(),
                    });
                }
                let bytes = std::fs::read(&file).map_err(|source| TemplateError::Read {
                    path: file.clone(),
                    source,
                })?;
                let source = String::from_utf8(bytes).map_err(|_| TemplateError::Read {
                    path: file.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
                })?;
                let key = format!("{name}/{fname}");
                t.env
                    .add_template_owned(key.clone(), source.clone())
                    .map_err(|e| TemplateError::Syntax {
                        path: file.clone(),
                        line: e.line().unwrap_or(0),
                        message: e.detail().unwrap_or(&e.kind().to_string()).to_owned(),
                    })?;
                t.sources.insert(key, source);
                t.index
                    .entry(name.clone())
                    .or_default()
                    .entry(family.to_owned())
                    .or_default()
                    .push(part.to_owned());
            }
        }
        t.check_names(dir)?;
        tracing::info!(dir = %dir.display(), count = t.len(), "templates loaded");
        Ok(t)
    }

    /// minijinja resolves filters, tests and functions only when it renders, so a typo
    /// (`| uper`) would otherwise surface at the first send as a 422. Render every file once
    /// without data, undefined values chaining silently, and fail on unknown names only
    /// (other errors are expected without data). Best effort: branches not taken without
    /// data (`{% if url is defined %}`) are not checked here, but at send time.
    fn check_names(&self, dir: &Path) -> Result<(), TemplateError> {
        let mut env = self.env.clone();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        let empty = minijinja::Value::from_serialize(serde_json::json!({}));
        for key in self.sources.keys() {
            let Err(e) = env.get_template(key).and_then(|t| t.render(&empty)) else {
                continue;
            };
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
            ) {
                return Err(TemplateError::Unknown {
                    path: dir.join(key),
                    line: e.line().unwrap_or(0),
                    message: match e.detail() {
                        Some(d) => format!("{}: {d}", e.kind()),
                        None => e.kind().to_string(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Template names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    /// The families a template has parts for, sorted.
    pub fn families(&self, name: &str) -> Vec<&str> {
        self.index
            .get(name)
            .map(|f| f.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn has(&self, name: &str, family: &str) -> bool {
        self.index.get(name).is_some_and(|f| f.contains_key(family))
    }

    /// Number of template files.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Render every part of `<name>/<family>.*` with `data` (a JSON object): part → text.
    pub fn render(
        &self,
        name: &str,
        family: &str,
        data: &serde_json::Value,
    ) -> Result<BTreeMap<String, String>, RenderError> {
        if !data.is_object() {
            return Err(RenderError::DataNotObject);
        }
        let parts = self
            .index
            .get(name)
            .and_then(|f| f.get(family))
            .ok_or_else(|| RenderError::Missing(name.to_owned(), family.to_owned()))?;
        let ctx = minijinja::Value::from_serialize(data);
        let mut out = BTreeMap::new();
        for part in parts {
            let key = format!("{name}/{family}.{part}.j2");
            let rendered = self
                .env
                .get_template(&key)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| self.render_error(&key, &e, data))?;
            let text = if part == "json" {
                let v: serde_json::Value =
                    serde_json::from_str(&rendered).map_err(|e| RenderError::NotJson {
                        file: key.clone(),
                        message: e.to_string(),
                    })?;
                v.to_string()
            } else {
                rendered
            };
            out.insert(part.clone(), text);
        }
        Ok(out)
    }

    fn render_error(
        &self,
        key: &str,
        e: &minijinja::Error,
        data: &serde_json::Value,
    ) -> RenderError {
        let excerpt = match (e.range(), self.sources.get(key)) {
            (Some(range), Some(src)) => excerpt(src, range),
            _ => String::new(),
        };
        let quoted = if excerpt.is_empty() || excerpt.chars().count() > 120 {
            String::new()
        } else {
            format!(" in `{excerpt}`")
        };
        let message = if e.kind() == ErrorKind::UndefinedError {
            // Name the variables of the failing tag that `data` lacks.
            let undeclared = self
                .env
                .get_template(key)
                .map(|t| t.undeclared_variables(false))
                .unwrap_or_default();
            let mut missing: Vec<&String> = undeclared
                .iter()
                .filter(|v| data.get(v.as_str()).is_none() && mentions(&excerpt, v))
                .collect();
            missing.sort();
            if missing.is_empty() {
                format!("undefined value{quoted}")
            } else {
                let names: Vec<String> = missing.iter().map(|v| format!("`{v}`")).collect();
                format!("`data` has no {}", names.join(", "))
            }
        } else {
            let detail = e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.kind().to_string());
            format!("{detail}{quoted}")
        };
        RenderError::Render {
            file: key.to_owned(),
            line: e.line(),
            message,
        }
    }
}

/// The source of the `{{ … }}` / `{% … %}` tag around `range` (minijinja's spans often
/// cover only a filter or an attribute), whitespace collapsed; else the span itself.
fn excerpt(src: &str, range: std::ops::Range<usize>) -> String {
    let tag = || -> Option<&str> {
        let before = src.get(..range.start)?;
        let open = before.rfind("{{").max(before.rfind("{%"))?;
        let inside = src.get(open + 2..range.start)?;
        if inside.contains("}}") || inside.contains("%}") {
            return None;
        }
        let after = src.get(range.end..)?;
        let close = [after.find("}}"), after.find("%}")]
            .into_iter()
            .flatten()
            .min()?;
        src.get(open..range.end + close + 2)
    };
    let text = tag().or_else(|| src.get(range.clone())).unwrap_or("");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `expr` mentions the variable `name`: not part of a longer identifier, not an attribute.
fn mentions(expr: &str, name: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    expr.match_indices(name).any(|(i, _)| {
        let before = expr[..i].chars().next_back();
        let after = expr[i + name.len()..].chars().next();
        !before.is_some_and(|c| ident(c) || c == '.') && !after.is_some_and(ident)
    })
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|key| match part_of(key) {
        "html" => AutoEscape::Html,
        "json" => AutoEscape::Json,
        _ => AutoEscape::None,
    });
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shipped() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")).unwrap()
    }

    fn data() -> serde_json::Value {
        json!({
            "patient_name": "Li Lei",
            "report_type": "CT chest",
            "report_id": "R-7",
            "hospital": "Herald General",
            "ready_at": "2026-11-29 09:30",
            "url": "https://reports.example.com/R-7"
        })
    }

    #[test]
    fn the_shipped_example_renders_for_every_family() {
        let t = shipped();
        assert_eq!(t.names(), vec!["report_ready"]);
        assert_eq!(
            t.families("report_ready"),
            vec!["email", "push", "sms", "webhook", "websocket", "wechat"]
        );
        let email = t.render("report_ready", "email", &data()).unwrap();
        assert_eq!(
            email.keys().collect::<Vec<_>>(),
            vec!["html", "subject", "txt"]
        );
        for part in email.values() {
            assert!(part.contains("CT chest"), "{part}");
        }
        // HTML-escaped (`/` → `&#x2f;`), still the same link.
        assert!(email["html"].contains("reports.example.com"));
        assert!(email["txt"].contains("Li Lei") && email["txt"].contains("R-7"));
        assert!(!email["subject"].contains('\n'));
        let sms = t.render("report_ready", "sms", &data()).unwrap();
        assert!(sms["txt"].contains("R-7"));
        let ws: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "websocket", &data()).unwrap()["json"])
                .unwrap();
        assert!(ws["title"].as_str().unwrap().contains("CT chest"));
        // `content` is an object here; the API stores it as JSON text.
        assert_eq!(ws["content"]["reportId"], "R-7");
        let wechat: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "wechat", &data()).unwrap()["json"])
                .unwrap();
        assert_eq!(wechat["data"]["keyword1"]["value"], "Li Lei");
        assert_eq!(wechat["url"], "https://reports.example.com/R-7");
        let push: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "push", &data()).unwrap()["json"])
                .unwrap();
        assert_eq!(push["data"]["reportId"], "R-7");
        assert!(push["data"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.is_string()));
        let hook: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "webhook", &data()).unwrap()["json"])
                .unwrap();
        assert_eq!(hook["reportId"], "R-7");
        // WeCom group robots (`wechat.robot`) take `md` / `txt`; no patient name in a group.
        let wechat = t.render("report_ready", "wechat", &data()).unwrap();
        assert_eq!(wechat.keys().collect::<Vec<_>>(), vec!["json", "md", "txt"]);
        for part in ["md", "txt"] {
            assert!(wechat[part].contains("R-7"), "{}", wechat[part]);
            assert!(wechat[part].contains("https://reports.example.com/R-7"));
            assert!(!wechat[part].contains("Li Lei"), "{}", wechat[part]);
        }
        // `url` is optional.
        let mut d = data();
        d.as_object_mut().unwrap().remove("url");
        let email = t.render("report_ready", "email", &d).unwrap();
        assert!(!email["html"].contains("https://"));
        let wechat: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "wechat", &d).unwrap()["json"]).unwrap();
        assert!(wechat.get("url").is_none(), "{wechat}");
    }

    #[test]
    fn escaping_follows_the_part() {
        let t = shipped();
        let mut d = data();
        d["patient_name"] = json!("<script>alert(\"x\")</script>\nnext");
        let email = t.render("report_ready", "email", &d).unwrap();
        assert!(!email["html"].contains("<script>"), "{}", email["html"]);
        assert!(email["html"].contains("&lt;script&gt;"));
        assert!(email["txt"].contains("<script>"));
        let ws = t.render("report_ready", "websocket", &d).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ws["json"]).unwrap();
        assert_eq!(
            v["content"]["patientName"],
            "<script>alert(\"x\")</script>\nnext"
        );
    }

    #[test]
    fn missing_data_and_non_objects_are_named() {
        let t = shipped();
        let err = t
            .render("report_ready", "email", &json!({"patient_name": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("report_ready/email."), "{err}");
        assert!(err.contains("`data` has no `report_type`"), "{err}");
        assert!(matches!(
            t.render("report_ready", "email", &json!([1])),
            Err(RenderError::DataNotObject)
        ));
        assert!(matches!(
            t.render("report_ready", "fax", &data()),
            Err(RenderError::Missing(..))
        ));
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn broken_files_fail_the_load_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok/email.txt.j2", "Hi {{ name }}");
        write(
            dir.path(),
            "bad/sms.txt.j2",
            "one\ntwo {{ name }}\nthree {% if %}\n",
        );
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad/sms.txt.j2:3: syntax error"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x/email.j2", "no part");
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("x/email.j2") && err.contains("<family>.<part>.j2"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "Bad Name/email.txt.j2", "x");
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Bad Name"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/email.txt.j2"), [0xff, 0xfe, 0x00]).unwrap();
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bin/email.txt.j2") && err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn json_parts_must_render_json_and_strays_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "n/push.json.j2", "{\"title\": {{ title }}, }");
        write(dir.path(), "n/README.md", "docs");
        write(dir.path(), "n/.email.txt.j2.swp", "junk");
        write(dir.path(), ".git/x.y.j2", "junk");
        let t = Templates::load(dir.path()).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.has("n", "push") && !t.has("n", "email"));
        let err = t.render("n", "push", &json!({"title": "a"})).unwrap_err();
        assert!(matches!(err, RenderError::NotJson { .. }), "{err}");
        assert!(err.to_string().contains("n/push.json.j2"));
    }

    #[test]
    fn a_missing_dir_is_empty() {
        let t = Templates::load(Path::new("/nonexistent/herald-templates")).unwrap();
        assert!(t.is_empty() && t.names().is_empty());
        assert!(Templates::empty().families("x").is_empty());
    }
    #[test]
    fn shareable_across_threads() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Templates>();
        check::<std::sync::Arc<Templates>>();
    }

    #[test]
    fn json_parts_escape_plain_values_and_come_back_compact() {
        let t = shipped();
        let mut d = data();
        d["patient_name"] = json!("Li \"Lei\"\nline 2 \\ </x>");
        let out = t.render("report_ready", "wechat", &d).unwrap();
        let json = &out["json"];
        assert!(!json.contains('\n'), "compact: {json}");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json, &v.to_string());
        assert_eq!(v["data"]["keyword1"]["value"], "Li \"Lei\"\nline 2 \\ </x>");
        assert_eq!(v["data"]["keyword2"]["value"], "CT chest");
        // Numbers stay numbers in webhook JSON but become strings in push `data`.
        d["report_id"] = json!(42);
        let hook: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "webhook", &d).unwrap()["json"])
                .unwrap();
        assert_eq!(hook["reportId"], 42);
        let push: serde_json::Value =
            serde_json::from_str(&t.render("report_ready", "push", &d).unwrap()["json"]).unwrap();
        assert_eq!(push["data"]["reportId"], "42");
    }

    #[test]
    fn render_errors_name_the_variable_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "n/email.txt.j2",
            "Hi {{ name }},\n{{ other | upper }} {% if url is defined %}{{ url }}{% endif %}",
        );
        write(dir.path(), "n/sms.txt.j2", "{{ user.name.first }}");
        write(
            dir.path(),
            "n/push.txt.j2",
            "{{ name | length | int }}{{ name * 2 | length }}",
        );
        let t = Templates::load(dir.path()).unwrap();
        let err = t.render("n", "email", &json!({"name": "a"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template n/email.txt.j2:2: `data` has no `other`"
        );
        let err = t.render("n", "email", &json!({})).unwrap_err().to_string();
        assert_eq!(err, "template n/email.txt.j2:1: `data` has no `name`");
        let err = t
            .render("n", "sms", &json!({"user": {"id": 1}}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template n/sms.txt.j2:1: undefined value in `{{ user.name.first }}`"
        );
        // A `data` field of the wrong type: minijinja's message and the tag.
        let err = t
            .render("n", "push", &json!({"name": 5}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template n/push.txt.j2:1: ") && err.contains("`{{ name | length"),
            "{err}"
        );
    }

    #[test]
    fn unknown_filters_and_misplaced_files_fail_the_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "n/email.txt.j2", "a\n{{ name | uper }}");
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("n/email.txt.j2:2: ") && err.contains("uper"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "n/email.txt.j2",
            "{% if x is defind %}x{% endif %}",
        );
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("n/email.txt.j2:1: ") && err.contains("defind"),
            "{err}"
        );

        // Errors a trial render without data would hit anyway are not load errors.
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "n/email.txt.j2",
            "{{ n | length }} {{ x | tojson }}",
        );
        Templates::load(dir.path()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "email.txt.j2", "x");
        write(dir.path(), "README.md", "docs");
        let err = Templates::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("email.txt.j2") && err.contains("<name>"),
            "{err}"
        );
    }
}
