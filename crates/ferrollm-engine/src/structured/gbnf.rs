//! GBNF (llama.cpp's grammar format) rewritten as the Lark syntax llguidance reads.
//!
//! GBNF rules are `name ::= body` and may span lines; Lark rules are `name: body` on one
//! line. Terminals map one to one: strings stay strings, character classes and `.` become
//! regexes; repetition operators (`*`, `+`, `?`, `{m,n}`) and grouping are the same.

/// Whether the grammar is written in GBNF (has a `::=` rule) rather than Lark.
pub fn looks_like_gbnf(src: &str) -> bool {
    src.contains("::=")
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Define,
    Str(String),
    Class(String),
    Dot,
    Punct(char),
    Repeat(String),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let cs: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, m: &str| Err(format!("grammar: GBNF {m} at character {i}"));
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if c == ':' && cs.get(i + 1) == Some(&':') && cs.get(i + 2) == Some(&'=') {
            out.push(Tok::Define);
            i += 3;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            let s = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_' || cs[i] == '-') {
                i += 1;
            }
            out.push(Tok::Ident(cs[s..i].iter().collect()));
        } else if c == '"' {
            i += 1;
            let mut text = String::new();
            loop {
                let Some(&c) = cs.get(i) else { return err(i, "unterminated string") };
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(&e) = cs.get(i) else { return err(i, "unterminated escape") };
                        i += 1;
                        text.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'x' | 'u' | 'U' => {
                                let len = match e {
                                    'x' => 2,
                                    'u' => 4,
                                    _ => 8,
                                };
                                let hex: String = cs.get(i..i + len).unwrap_or_default().iter().collect();
                                i += len;
                                u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| format!("grammar: GBNF bad escape \\{e}{hex}"))?
                            }
                            other => other,
                        });
                    }
                    c => text.push(c),
                }
            }
            out.push(Tok::Str(text));
        } else if c == '[' {
            let s = i;
            i += 1;
            while i < cs.len() && cs[i] != ']' {
                if cs[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            if i >= cs.len() {
                return err(s, "unterminated character class");
            }
            i += 1;
            out.push(Tok::Class(cs[s..i].iter().collect()));
        } else if c == '{' {
            let s = i;
            while i < cs.len() && cs[i] != '}' {
                i += 1;
            }
            if i >= cs.len() {
                return err(s, "unterminated repetition");
            }
            i += 1;
            out.push(Tok::Repeat(cs[s..i].iter().filter(|c| !c.is_whitespace()).collect()));
        } else if c == '.' {
            out.push(Tok::Dot);
            i += 1;
        } else if "|*+?()".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            return err(i, &format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// Lark names are lowercase identifiers (uppercase ones are lexer terminals); `root` is `start`.
fn rule_name(name: &str) -> String {
    if name == "root" {
        return "start".into();
    }
    format!("r_{}", name.to_ascii_lowercase().replace('-', "_"))
}

pub fn to_lark(src: &str) -> Result<String, String> {
    let toks = lex(src)?;
    let mut out = String::new();
    let mut has_root = false;
    let mut i = 0;
    while i < toks.len() {
        let (Tok::Ident(name), Some(Tok::Define)) = (&toks[i], toks.get(i + 1)) else {
            return Err("grammar: GBNF expects `name ::= ...` rules".into());
        };
        has_root |= name == "root";
        out.push_str(&rule_name(name));
        out.push(':');
        i += 2;
        while i < toks.len() && !matches!((&toks[i], toks.get(i + 1)), (Tok::Ident(_), Some(Tok::Define))) {
            out.push(' ');
            match &toks[i] {
                Tok::Ident(n) => out.push_str(&rule_name(n)),
                Tok::Str(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
                Tok::Class(c) => {
                    out.push('/');
                    out.push_str(&c.replace('/', "\\/"));
                    out.push('/');
                }
                Tok::Dot => out.push_str("/(?s:.)/"),
                Tok::Punct(c) => out.push(*c),
                Tok::Repeat(r) => out.push_str(r),
                Tok::Define => return Err("grammar: GBNF has `::=` without a rule name".into()),
            }
            i += 1;
        }
        out.push('\n');
    }
    if !has_root {
        return Err("grammar: a GBNF grammar needs a `root` rule".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_rules_terminals_and_operators() {
        let g = "root ::= greeting \" \" name # comment\ngreeting ::= (\"hi\" | \"hello\")\n  [!]?\nname ::= [a-z]{2,5} \"\\x41\" .";
        let lark = to_lark(g).unwrap();
        assert_eq!(
            lark,
            "start: r_greeting \" \" r_name\nr_greeting: ( \"hi\" | \"hello\" ) /[!]/ ?\nr_name: /[a-z]/ {2,5} \"A\" /(?s:.)/\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(to_lark("greeting ::= \"hi\"").unwrap_err().contains("root"));
        assert!(to_lark("root ::= \"open").unwrap_err().contains("unterminated"));
        assert!(to_lark("root ::= [abc").unwrap_err().contains("class"));
        assert!(to_lark("\"x\" ::= y").is_err());
    }
}
