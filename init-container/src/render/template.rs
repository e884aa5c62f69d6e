//! keyturn's template language: a small, Go-template-shaped language for combining a secret's
//! fields into one file (a connection string, a config snippet). It is deliberately not
//! Turing-complete: no loops but `range` over a secret's (finite) fields, no variables but
//! `range`'s, no user functions, no arithmetic.
//!
//! # Syntax
//!
//! Text is copied as is. Actions sit between `{{` and `}}`:
//!
//! | action | meaning |
//! |---|---|
//! | `{{ .password }}` | the field `password` of the secret named by the manifest entry's `path` |
//! | `{{ index . "api-key" }}` | a field whose name is not an identifier |
//! | `{{ .password \| urlquery }}` | a field through a function (also written `{{ urlquery .password }}`) |
//! | `{{ with secret "PATH" }}…{{ end }}` | inside, `.` is Vault's response for `PATH` (fetched too): `.Data` (KV v1 and dynamic engines: the fields; KV v2: `.Data.data` the fields, `.Data.metadata.version`), `.LeaseID`, `.LeaseDuration`, `.Renewable` |
//! | `{{ range $k, $v := . }}…{{ end }}` | once per field, in name order, with `$k` the name and `$v` the value (`range $v := …` also works) |
//! | `{{/* comment */}}` | nothing |
//! | `{{-` / `-}}` | trims the whitespace (newlines included) before / after the action, as in Go |
//!
//! Functions: `urlquery` (Go's query escaping: for a password inside a URL),
//! `base64Encode`, `base64Decode`, `toJSON` (a JSON string, or a JSON object for a set of
//! fields), `trimSpace`.
//!
//! This is the subset of Vault Agent / consul-template that pod templates use in practice,
//! so `vault.hashicorp.com/agent-inject-template-*` annotations parse unchanged; anything
//! else (`if`, `else`, `printf`, `secret` with write parameters, pipelines in parentheses) is
//! an error at parse time that names the construct, line and column.
//!
//! # Errors are loud
//!
//! A field that does not exist is an error naming the secret's path and the field, never an
//! empty string or `<no value>`. Printing a whole map is an error too (name a field, or use
//! `toJSON`).

use std::fmt;

use base64::Engine as _;
use keyturn_core::SecretValue;
use keyturn_core::vault::SecretData;

use super::{RenderError, SecretBuf};
use crate::fetch::{Engine, Fetched, FetchedSet, ReadKey};

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
}

/// A syntax error, with its position in the template text (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template line {line} column {col}: {message}")]
pub struct TemplateError {
    /// Line in the template.
    pub line: usize,
    /// Column (characters) in that line.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Output(Pipeline),
    With {
        path: String,
        body: Vec<Node>,
    },
    Range {
        key: Option<String>,
        value: String,
        over: Expr,
        body: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pipeline {
    expr: Expr,
    funcs: Vec<Func>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `.` followed by zero or more field names.
    Dot(Vec<String>),
    /// `$name` followed by zero or more field names.
    Var(String, Vec<String>),
    /// A string literal.
    Str(String),
    /// `index X "k1" "k2"…`.
    Index(Box<Expr>, Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    UrlQuery,
    Base64Encode,
    Base64Decode,
    ToJson,
    TrimSpace,
}

impl Func {
    fn lookup(name: &str) -> Option<Self> {
        Some(match name {
            "urlquery" => Self::UrlQuery,
            "base64Encode" => Self::Base64Encode,
            "base64Decode" => Self::Base64Decode,
            "toJSON" => Self::ToJson,
            "trimSpace" => Self::TrimSpace,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::UrlQuery => "urlquery",
            Self::Base64Encode => "base64Encode",
            Self::Base64Decode => "base64Decode",
            Self::ToJson => "toJSON",
            Self::TrimSpace => "trimSpace",
        }
    }
}

impl Template {
    /// Parses `src`.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the first unsupported or malformed construct.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let items = lex(src)?;
        let mut it = items.into_iter().peekable();
        let nodes = parse_block(&mut it, None)?;
        Ok(Self { nodes })
    }

    /// Every `secret "PATH"` the template reads, so they are fetched with the rest.
    #[must_use]
    pub fn secret_paths(&self) -> Vec<String> {
        fn walk(nodes: &[Node], out: &mut Vec<String>) {
            for n in nodes {
                match n {
                    Node::With { path, body } => {
                        if !out.contains(path) {
                            out.push(path.clone());
                        }
                        walk(body, out);
                    }
                    Node::Range { body, .. } => walk(body, out),
                    Node::Text(_) | Node::Output(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.nodes, &mut out);
        out
    }

    /// Renders with `.` = the fields of `root_path` (already fetched), writing into `out`.
    ///
    /// # Errors
    /// A [`RenderError`] naming the secret path and the field or construct.
    pub fn render(
        &self,
        root_path: &str,
        root: &SecretData,
        all: &FetchedSet,
        out: &mut SecretBuf,
    ) -> Result<(), RenderError> {
        let mut scope = Scope {
            all,
            vars: Vec::new(),
            out,
        };
        let dot = Val::Fields {
            path: root_path,
            data: root,
        };
        scope.exec(&self.nodes, &dot)
    }
}

// ---------------------------------------------------------------------------------------
// Lexing: text and actions.

#[derive(Debug)]
enum Item {
    Text(String),
    Action {
        tokens: Vec<Tok>,
        line: usize,
        col: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Ident(String),
    Str(String),
    Pipe,
    Comma,
    Declare,
    Other(char),
}

struct Pos<'a> {
    src: &'a str,
}

impl Pos<'_> {
    /// 1-based line and column of byte offset `at`.
    fn at(&self, at: usize) -> (usize, usize) {
        let before = &self.src[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(&self, at: usize, message: impl Into<String>) -> TemplateError {
        let (line, col) = self.at(at);
        TemplateError {
            line,
            col,
            message: message.into(),
        }
    }
}

fn lex(src: &str) -> Result<Vec<Item>, TemplateError> {
    let pos = Pos { src };
    let mut items = Vec::new();
    let mut i = 0;
    let mut trim_next = false;
    while i < src.len() {
        let Some(open) = src[i..].find("{{").map(|o| o + i) else {
            let mut text = &src[i..];
            if trim_next {
                text = text.trim_start();
            }
            if !text.is_empty() {
                items.push(Item::Text(text.to_owned()));
            }
            break;
        };
        let mut text = &src[i..open];
        if trim_next {
            text = text.trim_start();
        }
        let mut j = open + 2;
        let rest = &src[j..];
        let trim_before =
            rest.starts_with("- ") || rest.starts_with("-\t") || rest.starts_with("-\n");
        if trim_before {
            text = text.trim_end();
            j += 1;
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_owned()));
        }
        // Comments: {{/* … */}}
        let body_start = j + (src[j..].len() - src[j..].trim_start().len());
        if src[body_start..].starts_with("/*") {
            let Some(end) = src[body_start..].find("*/").map(|e| e + body_start + 2) else {
                return Err(pos.err(open, "unclosed comment"));
            };
            let after = src[end..].trim_start();
            let (trim_after, close) = if let Some(a) = after.strip_prefix("-}}") {
                (true, src.len() - a.len())
            } else if let Some(a) = after.strip_prefix("}}") {
                (false, src.len() - a.len())
            } else {
                return Err(pos.err(end, "a comment must be followed by }}"));
            };
            trim_next = trim_after;
            i = close;
            continue;
        }
        let (tokens, close, trim_after) = lex_action(src, j, &pos, open)?;
        let (line, col) = pos.at(open);
        items.push(Item::Action { tokens, line, col });
        trim_next = trim_after;
        i = close;
    }
    Ok(items)
}

/// Lexes one action starting at byte `start` (after `{{` / `{{-`). Returns the tokens, the
/// byte after `}}`, and whether the action ended with ` -}}`.
fn lex_action(
    src: &str,
    start: usize,
    pos: &Pos<'_>,
    open: usize,
) -> Result<(Vec<Tok>, usize, bool), TemplateError> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = start;
    loop {
        while i < b.len() && (b[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return Err(pos.err(open, "unclosed action: missing }}"));
        }
        let rest = &src[i..];
        if rest.starts_with("}}") {
            return Ok((toks, i + 2, false));
        }
        if rest.starts_with("-}}") && i > start && (b[i - 1] as char).is_ascii_whitespace() {
            return Ok((toks, i + 3, true));
        }
        let c = rest.chars().next().unwrap_or(' ');
        match c {
            '.' => {
                let (chain, n) = field_chain(rest);
                toks.push(Tok::Dot(chain));
                i += n;
            }
            '$' => {
                let name_len = ident_len(&rest[1..]);
                let name = rest[1..1 + name_len].to_owned();
                let (chain, n) = field_chain(&rest[1 + name_len..]);
                toks.push(Tok::Var(name, chain));
                i += 1 + name_len + n;
            }
            '"' => {
                let (s, n) = string_lit(rest)
                    .ok_or_else(|| pos.err(i, "unterminated or malformed string"))?;
                toks.push(Tok::Str(s));
                i += n;
            }
            '`' => {
                let end = rest[1..]
                    .find('`')
                    .ok_or_else(|| pos.err(i, "unterminated raw string"))?;
                toks.push(Tok::Str(rest[1..1 + end].to_owned()));
                i += end + 2;
            }
            '|' => {
                toks.push(Tok::Pipe);
                i += 1;
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            ':' if rest.starts_with(":=") => {
                toks.push(Tok::Declare);
                i += 2;
            }
            c if c.is_alphabetic() || c == '_' => {
                let n = ident_len(rest);
                toks.push(Tok::Ident(rest[..n].to_owned()));
                i += n;
            }
            c => {
                toks.push(Tok::Other(c));
                i += c.len_utf8();
            }
        }
    }
}

fn ident_len(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

/// `.a.b.c` → `["a","b","c"]` and its byte length; a lone `.` → `[]`.
fn field_chain(s: &str) -> (Vec<String>, usize) {
    let mut chain = Vec::new();
    let mut i = 0;
    while s[i..].starts_with('.') {
        let n = ident_len(&s[i + 1..]);
        if n == 0 {
            // A lone dot (the whole value) only at the start.
            if chain.is_empty() && i == 0 {
                i += 1;
            }
            break;
        }
        chain.push(s[i + 1..i + 1 + n].to_owned());
        i += 1 + n;
    }
    (chain, i)
}

/// A Go double-quoted string literal at the start of `s`: its value and byte length.
fn string_lit(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\n' => return None,
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Parsing: actions into nodes.

type Items = std::iter::Peekable<std::vec::IntoIter<Item>>;

fn parse_block(
    it: &mut Items,
    opened: Option<(usize, usize, &str)>,
) -> Result<Vec<Node>, TemplateError> {
    let mut nodes = Vec::new();
    while let Some(item) = it.next() {
        let (tokens, line, col) = match item {
            Item::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Item::Action { tokens, line, col } => (tokens, line, col),
        };
        let err = |m: String| TemplateError {
            line,
            col,
            message: m,
        };
        match tokens.first() {
            None => return Err(err("empty action {{ }}".into())),
            Some(Tok::Ident(w)) if w == "end" => {
                if tokens.len() != 1 {
                    return Err(err("end takes no arguments".into()));
                }
                return match opened {
                    Some(_) => Ok(nodes),
                    None => Err(err("end without a matching with or range".into())),
                };
            }
            Some(Tok::Ident(w)) if w == "with" => {
                let path = match &tokens[1..] {
                    // The manifest's own check, so `secret "/a/b/"` finds `a/b` and a path
                    // the manifest would refuse (`a/../b`, which Vault resolves to `b` while
                    // the audit names `a/../b`) is refused here too, before any read.
                    [Tok::Ident(s), Tok::Str(p)] if s == "secret" => {
                        if p.trim_matches('/').is_empty() {
                            return Err(err("secret \"\" names no path".into()));
                        }
                        crate::manifest::vault_path(p)
                            .map_err(|m| err(format!("with secret: {m}")))?
                    }
                    [Tok::Ident(s), Tok::Str(_), ..] if s == "secret" => {
                        return Err(err(
                            "secret with parameters writes to Vault; only reads (secret \"PATH\") are supported".into(),
                        ));
                    }
                    _ => return Err(err("only `with secret \"PATH\"` is supported".into())),
                };
                let body = parse_block(it, Some((line, col, "with")))?;
                nodes.push(Node::With { path, body });
            }
            Some(Tok::Ident(w)) if w == "range" => {
                let (key, value, expr_toks) =
                    match &tokens[1..] {
                        [
                            Tok::Var(k, kc),
                            Tok::Comma,
                            Tok::Var(v, vc),
                            Tok::Declare,
                            rest @ ..,
                        ] if kc.is_empty() && vc.is_empty() => (Some(k.clone()), v.clone(), rest),
                        [Tok::Var(v, vc), Tok::Declare, rest @ ..] if vc.is_empty() => {
                            (None, v.clone(), rest)
                        }
                        _ => return Err(err(
                            "range must be written `range $k, $v := EXPR` or `range $v := EXPR`"
                                .into(),
                        )),
                    };
                let over = parse_pipeline(expr_toks).map_err(err)?;
                if !over.funcs.is_empty() {
                    return Err(err("range over a function's result is not supported".into()));
                }
                let body = parse_block(it, Some((line, col, "range")))?;
                nodes.push(Node::Range {
                    key,
                    value,
                    over: over.expr,
                    body,
                });
            }
            Some(Tok::Ident(w))
                if matches!(w.as_str(), "if" | "else" | "define" | "template" | "block") =>
            {
                return Err(err(format!(
                    "`{w}` is not supported (see the template language in the README)"
                )));
            }
            _ => nodes.push(Node::Output(parse_pipeline(&tokens).map_err(err)?)),
        }
    }
    match opened {
        Some((line, col, what)) => Err(TemplateError {
            line,
            col,
            message: format!("{what} without a matching {{{{ end }}}}"),
        }),
        None => Ok(nodes),
    }
}

fn parse_pipeline(tokens: &[Tok]) -> Result<Pipeline, String> {
    let mut cmds = tokens.split(|t| *t == Tok::Pipe);
    let first = cmds.next().unwrap_or(&[]);
    let (expr, mut funcs) = parse_command(first)?;
    for cmd in cmds {
        match cmd {
            [Tok::Ident(f)] => funcs.push(Func::lookup(f).ok_or_else(|| unknown_fn(f))?),
            [] => return Err("empty command after |".into()),
            _ => return Err("after | only a function name may follow".into()),
        }
    }
    Ok(Pipeline { expr, funcs })
}

fn unknown_fn(f: &str) -> String {
    format!(
        "unknown function `{f}` (supported: urlquery, base64Encode, base64Decode, toJSON, trimSpace, index)"
    )
}

/// `OPERAND`, `index OPERAND "k"…`, or `FUNC ARGS…` (applied innermost first).
fn parse_command(tokens: &[Tok]) -> Result<(Expr, Vec<Func>), String> {
    match tokens {
        [] => Err("empty action".into()),
        [t] => operand(t).map(|e| (e, Vec::new())),
        [Tok::Ident(i), base, keys @ ..] if i == "index" => {
            let base = operand(base)?;
            let keys = keys
                .iter()
                .map(|k| match k {
                    Tok::Str(s) => Ok(s.clone()),
                    _ => Err("index takes string keys: index . \"field-name\"".to_owned()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Err("index needs at least one key".into());
            }
            Ok((Expr::Index(Box::new(base), keys), Vec::new()))
        }
        [Tok::Ident(f), rest @ ..] => {
            let func = Func::lookup(f).ok_or_else(|| unknown_fn(f))?;
            let (e, mut funcs) = parse_command(rest)?;
            funcs.push(func);
            Ok((e, funcs))
        }
        [first, ..] => {
            operand(first)?;
            Err("unsupported expression: one value per action (use | to apply a function)".into())
        }
    }
}

fn operand(t: &Tok) -> Result<Expr, String> {
    match t {
        Tok::Dot(chain) => Ok(Expr::Dot(chain.clone())),
        Tok::Var(name, chain) => Ok(Expr::Var(name.clone(), chain.clone())),
        Tok::Str(s) => Ok(Expr::Str(s.clone())),
        Tok::Ident(f) if Func::lookup(f).is_some() => {
            Err(format!("function `{f}` needs an argument"))
        }
        Tok::Ident(f) => Err(unknown_fn(f)),
        Tok::Other(c) => Err(format!("unexpected `{c}`")),
        Tok::Pipe | Tok::Comma | Tok::Declare => Err("unexpected punctuation".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation.

#[derive(Clone)]
enum Val<'a> {
    /// A secret's fields (`.` at the top, `.Data` for KV v1/dynamic, `.Data.data` for v2).
    Fields { path: &'a str, data: &'a SecretData },
    /// Vault's response for a path (`with secret`).
    Response { path: &'a str, f: &'a Fetched },
    /// `.Data` of a KV v2 response.
    Kv2Data { path: &'a str, f: &'a Fetched },
    /// `.Data.metadata` of a KV v2 response.
    Kv2Meta { path: &'a str, f: &'a Fetched },
    /// One field's value.
    Secret {
        path: &'a str,
        field: &'a str,
        v: &'a SecretValue,
    },
    /// A function's result over a secret.
    Owned {
        path: &'a str,
        v: std::rc::Rc<SecretValue>,
    },
    /// Non-secret text: a literal, a field name, a lease id.
    Text(std::borrow::Cow<'a, str>),
    /// A number (lease duration, version).
    Num(u64),
    /// A boolean (renewable).
    Bool(bool),
}

impl fmt::Debug for Val<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Val")
    }
}

struct Scope<'a, 'o> {
    all: &'a FetchedSet,
    vars: Vec<(String, Val<'a>)>,
    out: &'o mut SecretBuf,
}

impl<'a> Scope<'a, '_> {
    fn exec(&mut self, nodes: &'a [Node], dot: &Val<'a>) -> Result<(), RenderError> {
        for n in nodes {
            match n {
                Node::Text(t) => self.out.push(t.as_bytes())?,
                Node::Output(p) => {
                    let v = self.eval(&p.expr, dot)?;
                    let v = apply(v, &p.funcs)?;
                    self.print(&v)?;
                }
                Node::With { path, body } => {
                    let f = self
                        .all
                        .get(&ReadKey {
                            path: path.clone(),
                            version: None,
                        })
                        .ok_or_else(|| {
                            RenderError::Internal(format!(
                                "secret {path} used by a template was not fetched"
                            ))
                        })?;
                    self.exec(body, &Val::Response { path, f })?;
                }
                Node::Range {
                    key,
                    value,
                    over,
                    body,
                } => {
                    let over = self.eval(over, dot)?;
                    let (path, data) = match over {
                        Val::Fields { path, data } => (path, data),
                        Val::Kv2Data { path, .. } => {
                            return Err(RenderError::Template {
                                path: path.to_owned(),
                                message: "range over .Data of a KV v2 secret: use .Data.data"
                                    .into(),
                            });
                        }
                        other => {
                            return Err(RenderError::Template {
                                path: val_path(&other).to_owned(),
                                message: "range needs a secret's fields".into(),
                            });
                        }
                    };
                    for (k, v) in data.iter() {
                        let mark = self.vars.len();
                        if let Some(kn) = key {
                            self.vars.push((kn.clone(), Val::Text(k.as_str().into())));
                        }
                        self.vars
                            .push((value.clone(), Val::Secret { path, field: k, v }));
                        let r = self.exec(body, dot);
                        self.vars.truncate(mark);
                        r?;
                    }
                }
            }
        }
        Ok(())
    }

    fn eval(&self, e: &'a Expr, dot: &Val<'a>) -> Result<Val<'a>, RenderError> {
        match e {
            Expr::Dot(chain) => chain.iter().try_fold(dot.clone(), |v, name| field(v, name)),
            Expr::Var(name, chain) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| RenderError::Template {
                        path: val_path(dot).to_owned(),
                        message: format!("undefined variable ${name}"),
                    })?;
                chain.iter().try_fold(v, |v, name| field(v, name))
            }
            Expr::Str(s) => Ok(Val::Text(s.as_str().into())),
            Expr::Index(base, keys) => {
                let b = self.eval(base, dot)?;
                keys.iter().try_fold(b, |v, k| field(v, k))
            }
        }
    }

    fn print(&mut self, v: &Val<'_>) -> Result<(), RenderError> {
        match v {
            Val::Secret { v, .. } => self.out.push(v.expose()),
            Val::Owned { v, .. } => self.out.push(v.expose()),
            Val::Text(t) => self.out.push(t.as_bytes()),
            Val::Num(n) => self.out.push(n.to_string().as_bytes()),
            Val::Bool(b) => self.out.push(if *b { b"true" } else { b"false" }),
            Val::Fields { path, .. }
            | Val::Response { path, .. }
            | Val::Kv2Data { path, .. }
            | Val::Kv2Meta { path, .. } => Err(RenderError::Template {
                path: (*path).to_owned(),
                message: "cannot print a whole map: name a field (or use toJSON)".into(),
            }),
        }
    }
}

fn val_path<'a>(v: &Val<'a>) -> &'a str {
    match v {
        Val::Fields { path, .. }
        | Val::Response { path, .. }
        | Val::Kv2Data { path, .. }
        | Val::Kv2Meta { path, .. }
        | Val::Secret { path, .. }
        | Val::Owned { path, .. } => path,
        Val::Text(_) | Val::Num(_) | Val::Bool(_) => "",
    }
}

fn unknown(path: &str, field: &str, hint: &str) -> RenderError {
    RenderError::UnknownField {
        path: path.to_owned(),
        field: field.to_owned(),
        hint: hint.to_owned(),
    }
}

fn field<'a>(v: Val<'a>, name: &str) -> Result<Val<'a>, RenderError> {
    match v {
        Val::Fields { path, data } => match data.0.get_key_value(name) {
            Some((k, v)) => Ok(Val::Secret {
                path,
                field: k.as_str(),
                v,
            }),
            None => Err(unknown(path, name, "")),
        },
        Val::Response { path, f } => match name {
            "Data" if f.engine == Engine::Kv2 => Ok(Val::Kv2Data { path, f }),
            "Data" => Ok(Val::Fields {
                path,
                data: &f.data,
            }),
            "LeaseID" => Ok(Val::Text(
                f.lease.as_ref().map_or("", |l| l.id.as_str()).into(),
            )),
            "LeaseDuration" => Ok(Val::Num(f.lease.as_ref().map_or(0, |l| l.duration))),
            "Renewable" => Ok(Val::Bool(f.lease.as_ref().is_some_and(|l| l.renewable))),
            _ => Err(unknown(
                path,
                name,
                " (a response has .Data, .LeaseID, .LeaseDuration, .Renewable)",
            )),
        },
        Val::Kv2Data { path, f } => match name {
            "data" => Ok(Val::Fields {
                path,
                data: &f.data,
            }),
            "metadata" => Ok(Val::Kv2Meta { path, f }),
            _ => Err(unknown(
                path,
                name,
                " (a KV v2 secret's fields are under .Data.data)",
            )),
        },
        Val::Kv2Meta { path, f } => match name {
            "version" => Ok(Val::Num(f.version.unwrap_or(0))),
            _ => Err(unknown(
                path,
                name,
                " (only .Data.metadata.version is available)",
            )),
        },
        Val::Secret { path, field, .. } => Err(RenderError::Template {
            path: path.to_owned(),
            message: format!("field {field:?} is a value, not a map; it has no field {name:?}"),
        }),
        other => Err(RenderError::Template {
            path: val_path(&other).to_owned(),
            message: format!("a value has no field {name:?}"),
        }),
    }
}

fn apply<'a>(mut v: Val<'a>, funcs: &[Func]) -> Result<Val<'a>, RenderError> {
    for f in funcs {
        v = apply_one(v, *f)?;
    }
    Ok(v)
}

fn apply_one<'a>(v: Val<'a>, f: Func) -> Result<Val<'a>, RenderError> {
    let path = val_path(&v);
    let bytes: &[u8] = match &v {
        Val::Secret { v, .. } => v.expose(),
        Val::Owned { v, .. } => v.expose(),
        Val::Text(t) => t.as_bytes(),
        Val::Fields { data, .. } if f == Func::ToJson => {
            let mut b = SecretBuf::with_capacity(64);
            super::json_object(data, None, None, &mut b, path)?;
            return Ok(Val::Owned {
                path,
                v: std::rc::Rc::new(b.finish()),
            });
        }
        Val::Num(n) => return Ok(Val::Text(n.to_string().into())),
        Val::Bool(b) => return Ok(Val::Text(b.to_string().into())),
        _ => {
            return Err(RenderError::Template {
                path: path.to_owned(),
                message: format!("{} needs a value, not a map", f.name()),
            });
        }
    };
    let mut out = SecretBuf::with_capacity(bytes.len() + bytes.len() / 2 + 8);
    match f {
        Func::UrlQuery => {
            for &b in bytes {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        out.push(&[b])?
                    }
                    b' ' => out.push(b"+")?,
                    b => out.push(&[b'%', hex(b >> 4), hex(b & 15)])?,
                }
            }
        }
        Func::Base64Encode => {
            let mut tmp = zeroize::Zeroizing::new(vec![0u8; bytes.len().div_ceil(3) * 4]);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(bytes, &mut tmp[..])
                .map_err(|_| RenderError::Internal("base64 buffer size".into()))?;
            out.push(&tmp[..n])?;
        }
        Func::Base64Decode => {
            let mut tmp = zeroize::Zeroizing::new(vec![0u8; bytes.len()]);
            let n = base64::engine::general_purpose::STANDARD
                .decode_slice(bytes.trim_ascii(), &mut tmp[..])
                .map_err(|_| RenderError::Template {
                    path: path.to_owned(),
                    message: "base64Decode: not valid base64".into(),
                })?;
            out.push(&tmp[..n])?;
        }
        Func::ToJson => {
            let s = std::str::from_utf8(bytes).map_err(|_| RenderError::NotUtf8 {
                path: path.to_owned(),
                field: String::new(),
            })?;
            super::json_string(s, &mut out)?;
        }
        Func::TrimSpace => out.push(bytes.trim_ascii())?,
    }
    Ok(Val::Owned {
        path,
        v: std::rc::Rc::new(out.finish()),
    })
}

fn hex(n: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(n)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::Lease;

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        let mut d = SecretData::new();
        for (k, v) in pairs {
            d.insert(*k, SecretValue::from_str_copy(v));
        }
        d
    }

    fn fetched(engine: Engine, pairs: &[(&str, &str)]) -> Fetched {
        Fetched {
            engine,
            data: data(pairs),
            version: Some(3),
            lease: None,
        }
    }

    fn render_with(src: &str, root: &SecretData, all: &FetchedSet) -> Result<String, RenderError> {
        let t = Template::parse(src).unwrap();
        let mut out = SecretBuf::with_capacity(16);
        t.render("secret/data/app", root, all, &mut out)?;
        Ok(String::from_utf8(out.finish().expose().to_vec()).unwrap())
    }

    fn render(src: &str, pairs: &[(&str, &str)]) -> Result<String, RenderError> {
        render_with(src, &data(pairs), &FetchedSet::default())
    }

    #[test]
    fn fields_are_substituted_and_text_is_kept() {
        let s = render(
            "postgres://{{ .user }}:{{ .password }}@db:5432/app\n",
            &[("user", "u"), ("password", "p")],
        );
        assert_eq!(s.unwrap(), "postgres://u:p@db:5432/app\n");
    }

    #[test]
    fn index_reaches_fields_that_are_not_identifiers() {
        assert_eq!(
            render(r#"{{ index . "api-key" }}"#, &[("api-key", "k")]).unwrap(),
            "k"
        );
    }

    #[test]
    fn an_unknown_field_names_the_path_and_the_field() {
        let e = render("{{ .pasword }}", &[("password", "p")]).unwrap_err();
        assert_eq!(e.to_string(), "secret/data/app: no field \"pasword\"");
    }

    #[test]
    fn functions_apply_in_both_spellings() {
        let pairs = &[("p", "a b/c&d")];
        assert_eq!(render("{{ .p | urlquery }}", pairs).unwrap(), "a+b%2Fc%26d");
        assert_eq!(render("{{ urlquery .p }}", pairs).unwrap(), "a+b%2Fc%26d");
        assert_eq!(
            render("{{ .p | base64Encode | base64Decode }}", pairs).unwrap(),
            "a b/c&d"
        );
        assert_eq!(
            render("{{ .p | toJSON }}", &[("p", "q\"\n")]).unwrap(),
            r#""q\"\n""#
        );
        assert_eq!(
            render("{{ . | toJSON }}", &[("a", "1"), ("b", "2")]).unwrap(),
            r#"{"a":"1","b":"2"}"#
        );
        assert_eq!(
            render("[{{ .p | trimSpace }}]", &[("p", "  x \n")]).unwrap(),
            "[x]"
        );
    }

    #[test]
    fn range_visits_fields_in_name_order() {
        let s = render(
            "{{ range $k, $v := . }}{{ $k }}={{ $v }};{{ end }}",
            &[("b", "2"), ("a", "1")],
        );
        assert_eq!(s.unwrap(), "a=1;b=2;");
        let s = render(
            "{{ range $v := . }}<{{ $v }}>{{ end }}",
            &[("b", "2"), ("a", "1")],
        );
        assert_eq!(s.unwrap(), "<1><2>");
    }

    #[test]
    fn trim_markers_remove_adjacent_whitespace_like_go() {
        let s = render("a  \n{{- .x -}}\n  b", &[("x", "X")]);
        assert_eq!(s.unwrap(), "aXb");
        assert_eq!(render("{{/* note */}}x", &[]).unwrap(), "x");
        assert_eq!(render("a {{- /* note */ -}} b", &[]).unwrap(), "ab");
    }

    #[test]
    fn with_secret_exposes_the_vault_response_shape_for_each_engine() {
        let mut all = FetchedSet::default();
        all.insert(
            ReadKey {
                path: "secret/data/app".into(),
                version: None,
            },
            fetched(Engine::Kv2, &[("pw", "v2")]),
        );
        all.insert(
            ReadKey {
                path: "kv/app".into(),
                version: None,
            },
            fetched(Engine::Kv1, &[("pw", "v1")]),
        );
        let mut dynamic = fetched(Engine::Dynamic, &[("username", "u")]);
        dynamic.lease = Some(Lease {
            id: "database/creds/ro/abc".into(),
            duration: 3600,
            renewable: true,
        });
        all.insert(
            ReadKey {
                path: "database/creds/ro".into(),
                version: None,
            },
            dynamic,
        );
        let src = concat!(
            "{{- with secret \"secret/data/app\" -}}{{ .Data.data.pw }} v{{ .Data.metadata.version }}{{- end }}\n",
            "{{ with secret \"kv/app\" }}{{ .Data.pw }}{{ end }}\n",
            "{{ with secret \"database/creds/ro\" }}{{ .Data.username }} {{ .LeaseID }} {{ .LeaseDuration }} {{ .Renewable }}{{ end }}",
        );
        let s = render_with(src, &SecretData::new(), &all).unwrap();
        assert_eq!(s, "v2 v3\nv1\nu database/creds/ro/abc 3600 true");
    }

    #[test]
    fn a_kv2_field_read_as_if_kv1_says_where_the_fields_are() {
        let mut all = FetchedSet::default();
        all.insert(
            ReadKey {
                path: "secret/data/app".into(),
                version: None,
            },
            fetched(Engine::Kv2, &[("pw", "x")]),
        );
        let e = render_with(
            r#"{{ with secret "secret/data/app" }}{{ .Data.pw }}{{ end }}"#,
            &SecretData::new(),
            &all,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("no field \"pw\"") && e.to_string().contains(".Data.data"),
            "{e}"
        );
    }

    #[test]
    fn secret_paths_lists_every_with_block() {
        let t = Template::parse(r#"{{ with secret "/a/b/" }}{{ end }}{{ with secret "c" }}{{ with secret "a/b" }}{{ end }}{{ end }}"#)
            .unwrap();
        assert_eq!(t.secret_paths(), ["a/b", "c"]);
    }

    #[test]
    fn a_with_secret_path_with_a_dot_dot_empty_or_dot_segment_is_refused_at_parse_time() {
        // The manifest's own rule for `path:`: a template must not read a path the manifest
        // could not name (`a/../b` would read `b`, and the audit would name `a/../b`).
        for (src, col) in [
            (r#"{{ with secret "secret/data/app/../one" }}{{ end }}"#, 1),
            (r#"x{{ with secret "secret/data/./one" }}{{ end }}"#, 2),
            (r#"{{ with secret "secret//data/one" }}{{ end }}"#, 1),
            (
                r#"{{ with secret "a" }}{{ with secret "a/.." }}{{ end }}{{ end }}"#,
                22,
            ),
        ] {
            let e = Template::parse(src).unwrap_err();
            assert_eq!((e.line, e.col), (1, col), "{src}: {e}");
            assert!(
                e.message.contains("has an empty, . or .. segment"),
                "{src}: {e}"
            );
        }
    }

    #[test]
    fn printing_a_map_is_an_error_not_a_go_map_dump() {
        let e = render("{{ . }}", &[("a", "1")]).unwrap_err();
        assert!(e.to_string().contains("cannot print a whole map"), "{e}");
    }

    #[test]
    fn unsupported_constructs_fail_at_parse_time_with_a_position() {
        let cases = [
            ("x\n  {{ if .a }}y{{ end }}", 2, 3, "`if` is not supported"),
            ("{{ .a | printf }}", 1, 1, "unknown function `printf`"),
            (
                "{{ with secret \"pki/issue/x\" \"common_name=a\" }}{{ end }}",
                1,
                1,
                "writes to Vault",
            ),
            (
                "{{ with secret \"a\" }}",
                1,
                1,
                "with without a matching {{ end }}",
            ),
            ("{{ end }}", 1, 1, "end without"),
            ("{{ .a ", 1, 1, "unclosed action"),
            ("{{ (.a) }}", 1, 1, "unexpected `(`"),
        ];
        for (src, line, col, msg) in cases {
            let e = Template::parse(src).unwrap_err();
            assert_eq!((e.line, e.col), (line, col), "{src}: {e}");
            assert!(e.message.contains(msg), "{src}: {e}");
        }
    }

    #[test]
    fn undefined_variables_are_errors() {
        let e = render("{{ $nope }}", &[]).unwrap_err();
        assert!(e.to_string().contains("undefined variable $nope"), "{e}");
    }
}
