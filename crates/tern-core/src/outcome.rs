//! How an SMTP reply, or the lack of one, is classified for delivery.

use serde::{Deserialize, Serialize};

/// The three ways a delivery attempt can end.
///
/// RFC 5321 4.2.1: 2yz is success, 4yz a transient failure (try again later), 5yz a permanent failure (give up
/// and tell the sender). A network error or a timeout says nothing about the recipient, so it counts as
/// transient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyClass {
    /// Delivered (2yz).
    Success,
    /// Try again later (4yz, a network error, or a timeout).
    Transient,
    /// Give up and send a DSN (5yz).
    Permanent,
}

impl ReplyClass {
    /// Classifies a final reply code. 1yz and 3yz are not final answers to a delivery; if one arrives where a
    /// final reply was expected the server is misbehaving, and the safe reading is transient.
    pub fn from_code(code: u16) -> Self {
        match code / 100 {
            2 => ReplyClass::Success,
            5 => ReplyClass::Permanent,
            _ => ReplyClass::Transient,
        }
    }

    /// Classifies a reply, or its absence (`None`: the connection dropped, timed out or never opened).
    pub fn from_reply(code: Option<u16>) -> Self {
        code.map_or(ReplyClass::Transient, Self::from_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_classify_by_first_digit() {
        assert_eq!(ReplyClass::from_code(250), ReplyClass::Success);
        assert_eq!(ReplyClass::from_code(251), ReplyClass::Success);
        assert_eq!(ReplyClass::from_code(421), ReplyClass::Transient);
        assert_eq!(ReplyClass::from_code(452), ReplyClass::Transient);
        assert_eq!(ReplyClass::from_code(550), ReplyClass::Permanent);
        assert_eq!(ReplyClass::from_code(554), ReplyClass::Permanent);
    }

    #[test]
    fn network_errors_and_odd_codes_are_transient() {
        assert_eq!(ReplyClass::from_reply(None), ReplyClass::Transient);
        assert_eq!(ReplyClass::from_code(354), ReplyClass::Transient);
        assert_eq!(ReplyClass::from_code(100), ReplyClass::Transient);
        assert_eq!(ReplyClass::from_code(999), ReplyClass::Transient);
    }
}
