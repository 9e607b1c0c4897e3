//! Printing an error with its causes, once each.
//!
//! Errors here and in the libraries berth uses differ in whether their message already includes
//! their cause (`"cannot connect to Marathon at …: <cause>"`) or leaves it to `source()` (reqwest's
//! `"error sending request"`, whose cause says `"Connection refused"`). Printing only the top
//! message loses the cause; printing every `source()` repeats it. [`error_chain`] walks the chain
//! and adds a cause only when its text is not already there.

use std::error::Error;

/// The error's message followed by each cause whose text it does not already contain, joined
/// with `": "`.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let message = e.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn chain(messages: &[&'static str]) -> E {
        messages
            .iter()
            .rev()
            .fold(None, |inner, m| Some(E(m, inner.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn adds_each_cause_once() {
        let e = chain(&[
            "error sending request",
            "client error (Connect)",
            "Connection refused",
        ]);
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): Connection refused"
        );
    }

    #[test]
    fn skips_causes_the_message_already_contains() {
        let e = chain(&[
            "Marathon: cannot connect: error sending request: Connection refused",
            "cannot connect: error sending request: Connection refused",
            "error sending request",
            "Connection refused",
        ]);
        assert_eq!(
            error_chain(&e),
            "Marathon: cannot connect: error sending request: Connection refused"
        );
    }

    #[test]
    fn a_lone_error_is_its_message() {
        assert_eq!(error_chain(&chain(&["no such file"])), "no such file");
    }
}
