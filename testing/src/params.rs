//! Request parameters: a form or JSON body, flattened to name/value pairs.

use std::collections::BTreeMap;
use std::fmt;

/// The parameters of a request, by name: what Stripe compares when a key is reused.
///
/// Form bodies (`amount=2000&currency=usd`) and flat JSON objects
/// (`{"amount":2000,"currency":"usd"}`) give the same parameters, so a replay may switch
/// encoding without being told it changed them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `body` as JSON when `json` is true, else as `application/x-www-form-urlencoded`.
    pub(crate) fn parse(body: &[u8], json: bool) -> Result<Self, String> {
        if json {
            Self::parse_json(body)
        } else {
            Self::parse_form(body)
        }
    }

    fn parse_form(body: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body)
            .map_err(|_| "the request body is not valid UTF-8".to_owned())?;
        let mut map = BTreeMap::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name)?;
            if name.is_empty() {
                return Err("a form parameter has an empty name".to_owned());
            }
            map.insert(name, decode(value)?);
        }
        Ok(Params(map))
    }

    fn parse_json(body: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not valid JSON: {e}"))?;
        let object = match value {
            serde_json::Value::Object(object) => object,
            _ => return Err("the request body must be a JSON object".to_owned()),
        };
        let mut map = BTreeMap::new();
        for (name, value) in object {
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => return Err(format!("parameter {name} must be a string or a number")),
            };
            map.insert(name, value);
        }
        Ok(Params(map))
    }

    /// The value of parameter `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every parameter, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Percent-decodes one form component (`+` is a space).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly: `from_str_radix` alone would take `%+1`.
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_json_bodies_give_the_same_params() {
        let form = Params::parse(b"amount=2000&currency=usd&description=a+b%21", false).unwrap();
        let json = Params::parse(
            br#"{"currency":"usd","amount":2000,"description":"a b!"}"#,
            true,
        )
        .unwrap();
        assert_eq!(form, json);
        assert_eq!(form.get("description"), Some("a b!"));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for (body, json) in [
            (&b"amount=%zz"[..], false),
            (b"amount=%4", false),
            // Two hex digits exactly: not a sign, as `u8::from_str_radix` would allow.
            (b"amount=%+1", false),
            (b"amount=%-1", false),
            (b"=1", false),
            (b"\xff\xfe", false),
            (b"{", true),
            (b"[1,2]", true),
            (br#"{"metadata":{"a":1}}"#, true),
        ] {
            assert!(Params::parse(body, json).is_err(), "{body:?}");
        }
        assert_eq!(Params::parse(b"", false).unwrap(), Params::default());
    }
}
