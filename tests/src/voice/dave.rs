//! The double's side of DAVE (Discord's audio end-to-end encryption over MLS), per connection:
//! the voice server's part of the protocol (external sender, transitions, epochs) and the other
//! member of the call, who decrypts what the bot sends.
//!
//! Sequence for a client that identified with `max_dave_protocol_version >= 1` (songbird 0.6.1):
//! op 4 carries `dave_protocol_version: 1`; the double announces the other member (op 11) and
//! its external sender (binary op 25); the client's key package (binary op 26) is added to the
//! group by an external proposal the other member commits, and the client is welcomed (binary op
//! 30 with a transition id); the client says it is ready (op 23) and the double executes the
//! transition (op 22): from then on every audio frame must arrive end-to-end encrypted.
//! Later: a member joining (op 11 + binary op 27; the client commits with binary op 28, the
//! double announces it with binary op 29), a downgrade (op 21 with protocol 0), a new epoch 1
//! (op 24) and an invalid commit (op 29 the client cannot process; it answers op 31 and starts
//! over with a new key package).

use std::collections::HashMap;

use super::dave_peer::DavePeer;

/// The other member's user id in every DAVE call of the double.
pub const PEER_USER_ID: u64 = 700_000_000_000_000_001;
/// User ids of members the test adds later ([`super::Connection::add_dave_member`]).
pub const FIRST_ADDED_USER_ID: u64 = 700_000_000_000_000_100;

/// The payload of an audio frame that is DAVE-encrypted ends with this marker.
pub const MAGIC_MARKER: [u8; 2] = [0xFA, 0xFA];

/// What the double sends on the websocket.
#[derive(Debug)]
pub(crate) enum Out {
    Json(u64, serde_json::Value),
    /// `[op][payload]`.
    Binary(u8, Vec<u8>),
}

/// Requests from the test thread.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Command {
    AddMember,
    Downgrade,
    PrepareEpoch,
    InvalidCommit,
}

/// One connection's DAVE state.
pub(crate) struct DaveLink {
    peer: DavePeer,
    /// Transitions sent and not executed yet: id → protocol version.
    pending: HashMap<u16, u16>,
    next_member: u64,
    /// A commit the double sent on purpose that the client must refuse.
    invalid_commit: Option<u16>,
}

/// What a handled message changed, for the connection's counters.
#[derive(Debug, Default)]
pub(crate) struct Effect {
    pub(crate) out: Vec<Out>,
    /// A transition was executed to this protocol version.
    pub(crate) executed: Option<u16>,
    /// The double started something after which the client sends plain audio for a while (a
    /// reset, a downgrade).
    pub(crate) leaving: bool,
    pub(crate) invalid_commits: usize,
    pub(crate) key_packages: usize,
    pub(crate) errors: Vec<String>,
}

impl DaveLink {
    /// The link, and what to send right after op 4: op 11 naming the other member, op 25 with
    /// the external sender.
    pub(crate) fn start(channel_id: u64, bot_user_id: u64) -> Result<(DaveLink, Vec<Out>), String> {
        let peer = DavePeer::new(channel_id, PEER_USER_ID, bot_user_id)?;
        let out = vec![
            Out::Json(11, serde_json::json!({ "user_ids": [PEER_USER_ID.to_string()] })),
            Out::Binary(25, peer.external_sender_op25()),
        ];
        Ok((DaveLink { peer, pending: HashMap::new(), next_member: FIRST_ADDED_USER_ID, invalid_commit: None }, out))
    }

    /// A new transition to `version`, waiting for the client's op 23.
    fn transition(&mut self, version: u16) -> u16 {
        let id = self.peer.new_transition_id();
        self.pending.insert(id, version);
        id
    }

    /// Books the transition of an op 29 / op 30 payload (its first two bytes).
    fn announced(&mut self, payload: &[u8]) {
        if let [a, b, ..] = payload {
            self.pending.insert(u16::from_be_bytes([*a, *b]), 1);
        }
    }

    /// The current MLS epoch of the group, as the other member sees it (`None` before the
    /// client joined).
    pub(crate) fn epoch(&self) -> Option<u64> {
        Some(self.peer.epoch()).filter(|e| *e > 0)
    }

    /// Decrypts an audio frame's payload (one that ends with [`MAGIC_MARKER`]).
    pub(crate) fn decrypt(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        Ok(self.peer.decrypt(payload)?)
    }

    /// A binary message from the client.
    pub(crate) fn on_binary(&mut self, op: u8, payload: &[u8]) -> Effect {
        let mut effect = Effect::default();
        match op {
            // Key package: a first join, or a rejoin after a reset (op 24, op 31), which
            // replaces the client's old leaf. Until the rejoin's transition, audio is plain.
            26 => {
                effect.key_packages = 1;
                match self.peer.on_key_package_op26(payload) {
                    Ok(welcome) => {
                        self.announced(&welcome);
                        effect.out.push(Out::Binary(30, welcome));
                    }
                    Err(e) => effect.errors.push(format!("key package: {e}")),
                }
            }
            // The client's commit (and welcome) for proposals we sent: announced to it too.
            28 => match self.peer.on_op28_commit(payload) {
                Ok((_, commit)) => {
                    self.announced(&commit);
                    effect.out.push(Out::Binary(29, commit));
                }
                Err(e) => effect.errors.push(format!("commit: {e}")),
            },
            other => effect.errors.push(format!("unexpected binary op {other}")),
        }
        effect
    }

    /// A JSON message from the client this layer handles (ops 23 and 31); `None` for others.
    pub(crate) fn on_json(&mut self, op: u64, d: &serde_json::Value) -> Option<Effect> {
        let mut effect = Effect::default();
        let id = d["transition_id"].as_u64().and_then(|t| u16::try_from(t).ok());
        match op {
            23 => {
                let Some(id) = id else {
                    effect.errors.push(format!("op 23 without a transition id: {d}"));
                    return Some(effect);
                };
                match self.pending.remove(&id) {
                    Some(version) => {
                        effect.out.push(Out::Json(22, serde_json::json!({ "transition_id": id })));
                        effect.executed = Some(version);
                        effect.leaving = version == 0;
                    }
                    None => effect.errors.push(format!("op 23 for unknown transition {id}")),
                }
            }
            31 => {
                effect.invalid_commits = 1;
                if id.is_some() && id == self.invalid_commit {
                    self.invalid_commit = None;
                } else {
                    effect.errors.push(format!("the client refused transition {id:?}"));
                }
                if let Some(id) = id {
                    self.pending.remove(&id);
                }
            }
            _ => return None,
        }
        Some(effect)
    }

    /// A request from the test.
    pub(crate) fn command(&mut self, command: Command) -> Effect {
        let mut effect = Effect::default();
        match command {
            Command::AddMember => {
                let user = self.next_member;
                self.next_member += 1;
                match self.peer.add_member_op27(user) {
                    Ok(proposals) => {
                        effect.out.push(Out::Json(11, serde_json::json!({ "user_ids": [user.to_string()] })));
                        effect.out.push(Out::Binary(27, proposals));
                    }
                    Err(e) => effect.errors.push(format!("proposal: {e}")),
                }
            }
            Command::Downgrade => {
                let id = self.transition(0);
                effect.out.push(Out::Json(21, serde_json::json!({ "transition_id": id, "protocol_version": 0 })));
            }
            Command::PrepareEpoch => {
                effect.leaving = true;
                effect.out.push(Out::Json(24, serde_json::json!({ "epoch": 1, "protocol_version": 1 })));
            }
            Command::InvalidCommit => {
                effect.leaving = true;
                let id = self.transition(1);
                self.invalid_commit = Some(id);
                // A commit message that is not MLS at all.
                effect.out.push(Out::Binary(29, [id.to_be_bytes().as_slice(), &[0x00, 0x01, 0xde, 0xad]].concat()));
            }
        }
        effect
    }
}

/// Whether an audio payload is DAVE-encrypted (ends with the marker).
pub(crate) fn is_e2ee(payload: &[u8]) -> bool {
    payload.len() > MAGIC_MARKER.len() && payload.ends_with(&MAGIC_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A davey session driven the way songbird drives it joins through the link, and what it
    /// encrypts decrypts; hostile messages are refused without a panic.
    #[test]
    fn a_bot_session_joins_and_its_frames_decrypt() {
        let (channel, bot) = (900_000_000_000_000_001, 42);
        let (mut link, out) = DaveLink::start(channel, bot).unwrap();
        assert!(matches!(&out[0], Out::Json(11, d) if d["user_ids"][0] == PEER_USER_ID.to_string()));
        let Out::Binary(25, sender) = &out[1] else { panic!("{out:?}") };
        // songbird: a key package on op 4, the external sender when op 25 arrives.
        let mut bot_session = davey::DaveSession::new(std::num::NonZeroU16::new(1).unwrap(), bot, channel, None).unwrap();
        let key_package = bot_session.create_key_package().unwrap();
        bot_session.set_external_sender(sender).unwrap();
        let effect = link.on_binary(26, &key_package);
        assert!(effect.errors.is_empty(), "{:?}", effect.errors);
        let Some(Out::Binary(30, welcome)) = effect.out.first() else { panic!("{:?}", effect.out) };
        bot_session.process_welcome(&welcome[2..]).unwrap();
        assert_eq!(link.epoch(), Some(1));
        let ready = link.on_json(23, &serde_json::json!({ "transition_id": u16::from_be_bytes([welcome[0], welcome[1]]) })).unwrap();
        assert!(matches!(&ready.out[..], [Out::Json(22, _)]) && ready.executed == Some(1), "{ready:?}");

        let opus = [0xfc, 1, 2, 3, 4, 5, 6, 7];
        let frame = bot_session.encrypt_opus(&opus).unwrap().into_owned();
        assert!(is_e2ee(&frame) && frame != opus);
        assert_eq!(link.decrypt(&frame).unwrap(), opus);

        assert!(!link.on_binary(26, &[0xff; 3]).errors.is_empty());
        assert!(!link.on_binary(28, &[0x00, 0x01, 0x40]).errors.is_empty());
        assert!(!link.on_binary(99, &[]).errors.is_empty());
        assert!(link.on_json(23, &serde_json::json!({ "transition_id": 999 })).unwrap().executed.is_none());
        assert!(link.decrypt(&[1, 2, 3, 0xfa, 0xfa]).is_err());
        // The link still works: the bot's next frame decrypts.
        let frame = bot_session.encrypt_opus(&opus).unwrap().into_owned();
        assert_eq!(link.decrypt(&frame).unwrap(), opus);
    }
}
