//! The server side and the other member of a DAVE call, for the voice double ([`super::dave`]).
//!
//! [`DavePeer`] plays both roles a fake voice gateway needs: the gateway (it owns the MLS
//! external sender key announced with op 25, turns key packages into signed external proposals,
//! checks op 28 and makes the op 29 / op 30 payloads), and the other member (an in-process
//! `davey::DaveSession` that creates the group, commits the bot into it and decrypts its audio;
//! more members can be added to change the epoch). Payloads are without the opcode byte.
//!
//! | op | dir | payload |
//! |----|-----|---------|
//! | 25 | S→C | TLS `ExternalSender { signature_key: opaque<V>, credential: Credential }` |
//! | 26 | C→S | bare TLS `KeyPackage` |
//! | 27 | S→C | `[operation_type u8]` (0 = append) + `opaque<V>` of concatenated `MLSMessage` proposals (sender = external #0) |
//! | 28 | C→S | `MLSMessage` commit, then an optional bare TLS `Welcome` |
//! | 29 | S→C | `[transition_id u16 BE]` + the commit as received (to the committer too: songbird merges its own commit only then) |
//! | 30 | S→C | `[transition_id u16 BE]` + bare TLS `Welcome` |
//!
//! Verified against davey 0.1.5 driven the way songbird 0.6.1 drives it: the first join lands at
//! epoch 1; a rejoin (a fresh key package after op 31 or op 24) removes the bot's stale leaf in
//! the same commit; frames must be decrypted in the order they were sent (a ratchet refuses a
//! frame older than the first it decrypted); old-epoch keys stay usable for 10 s. tls_codec
//! `debug_assert!`s on truncated vectors, so parsing here is guarded against panics.

use std::fmt;
use std::num::NonZeroU16;

use davey::{DaveSession, MediaType, ProposalsOperationType, SessionStatus};
use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, ContentType, Credential, ExternalProposal, ExternalSender, GroupEpoch, GroupId,
    KeyPackageIn, LeafNodeIndex, MlsMessageIn, ProtocolMessage, ProtocolVersion,
    SenderExtensionIndex, SignaturePublicKey, SignatureScheme, VLBytes, Welcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;

/// op 27 operation type "append these proposals" (what an Add uses).
const PROPOSALS_APPEND: u8 = 0;
/// DAVE protocol version spoken here (the only one davey 0.1.5 supports).
const DAVE_PROTOCOL_VERSION: u16 = 1;

/// Identity put in the external sender's basic credential. Clients only compare the whole
/// external sender with the one in the group context, so any value works.
const EXTERNAL_SENDER_IDENTITY: &[u8] = b"fake-discord-voice-gateway";

/// Errors of [`DavePeer`]. Inner library errors are flattened to strings so the type stays
/// `Send + Sync + 'static` and cheap to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DavePeerError {
    /// Bytes could not be parsed as the expected MLS / DAVE structure.
    Malformed(String),
    /// Parsed fine but refused (bad signature, wrong group/epoch/user, invalid commit...).
    Rejected(String),
    /// Call not valid in the current state (e.g. op 27 before anyone joined).
    State(String),
    /// Media frame could not be decrypted (or was not a DAVE frame).
    Decrypt(String),
}

impl fmt::Display for DavePeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => write!(f, "malformed DAVE message: {m}"),
            Self::Rejected(m) => write!(f, "DAVE message rejected: {m}"),
            Self::State(m) => write!(f, "DAVE state error: {m}"),
            Self::Decrypt(m) => write!(f, "DAVE decrypt failed: {m}"),
        }
    }
}

impl std::error::Error for DavePeerError {}

impl From<DavePeerError> for String {
    fn from(e: DavePeerError) -> String {
        e.to_string()
    }
}

type Result<T, E = DavePeerError> = std::result::Result<T, E>;

/// An in-process group member other than the main peer (second-member flow).
struct ExtraMember {
    user_id: u64,
    session: DaveSession,
    /// false until the welcome for its Add proposal has been processed.
    joined: bool,
}

/// Fake voice gateway + simulated other call member(s) for one voice channel. See module docs.
pub struct DavePeer {
    channel_id: u64,
    peer_user_id: u64,
    bot_user_id: u64,
    /// Only used for its crypto backend (key package signature validation).
    provider: OpenMlsRustCrypto,
    /// P-256 key of the external sender (the "voice gateway"); signs every external proposal.
    external_signer: SignatureKeyPair,
    /// TLS-serialized `ExternalSender` = op 25 payload.
    external_sender: Vec<u8>,
    /// The main simulated member. It creates the group and commits the bot into it.
    peer: DaveSession,
    extras: Vec<ExtraMember>,
    /// Add proposals sent with op 27 and not yet committed (a commit must carry a welcome).
    uncommitted_adds: usize,
    next_transition_id: u16,
}

/// Run a TLS decode, turning both decode errors *and panics* into [`DavePeerError::Malformed`].
///
/// tls_codec 0.4.2 has `debug_assert!`s on truncated `opaque<V>` vectors, so with
/// debug assertions on (every `cargo test` build) a truncated length *panics* instead of
/// returning an error. Parsing has no side effects, so catching the unwind is sound.
fn guarded_decode<T>(
    what: &str,
    decode: impl FnOnce() -> std::result::Result<T, openmls::prelude::tls_codec::Error>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DavePeerError::Malformed(format!("{what}: {e}"))),
        Err(_) => Err(DavePeerError::Malformed(format!(
            "{what}: inconsistent length (tls_codec debug assertion)"
        ))),
    }
}

fn mls_err(ctx: &str, e: impl fmt::Debug) -> DavePeerError {
    DavePeerError::Rejected(format!("{ctx}: {e:?}"))
}

fn protocol_version() -> NonZeroU16 {
    NonZeroU16::new(DAVE_PROTOCOL_VERSION).expect("non-zero")
}

/// User id stored in a DAVE basic credential (8 bytes, big endian).
fn credential_user_id(credential: &Credential) -> Option<u64> {
    credential.serialized_content().try_into().ok().map(u64::from_be_bytes)
}

impl DavePeer {
    /// Create the external sender key pair and the peer's `DaveSession` (which immediately
    /// creates its own pending, one-member group at epoch 0 — exactly what a first Discord
    /// client does when it receives op 25).
    pub fn new(channel_id: u64, peer_user_id: u64, bot_user_id: u64) -> Result<Self> {
        let external_signer = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256)
            .map_err(|e| DavePeerError::State(format!("generating external sender key: {e:?}")))?;
        // ExternalSender = { signature_key: uncompressed SEC1 P-256 point (65 bytes),
        //                    credential: Basic(identity) }
        let sender = ExternalSender::new(
            SignaturePublicKey::from(external_signer.to_public_vec()),
            BasicCredential::new(EXTERNAL_SENDER_IDENTITY.to_vec()).into(),
        );
        let external_sender = sender
            .tls_serialize_detached()
            .map_err(|e| DavePeerError::State(format!("serializing external sender: {e:?}")))?;

        let mut peer = DaveSession::new(protocol_version(), peer_user_id, channel_id, None)
            .map_err(|e| DavePeerError::State(format!("creating peer session: {e:?}")))?;
        peer.set_external_sender(&external_sender)
            .map_err(|e| DavePeerError::State(format!("peer set_external_sender: {e:?}")))?;

        Ok(Self {
            channel_id,
            peer_user_id,
            bot_user_id,
            provider: OpenMlsRustCrypto::default(),
            external_signer,
            external_sender,
            peer,
            extras: Vec::new(),
            uncommitted_adds: 0,
            next_transition_id: 1,
        })
    }


    /// op 25 payload **without** the opcode byte: TLS-serialized `ExternalSender`.
    pub fn external_sender_op25(&self) -> Vec<u8> {
        self.external_sender.clone()
    }

    /// Current MLS epoch of the group (0 = nobody committed yet).
    pub fn epoch(&self) -> u64 {
        self.peer.epoch().map(|e| e.as_u64()).unwrap_or(0)
    }

    /// Handle op 26 from the bot: validate its key package, have the gateway propose adding
    /// it (external Add, epoch = current, sender = external sender #0), let the peer commit
    /// that proposal and merge its own commit. Returns the op 30 payload
    /// (`[transition_id u16 BE][Welcome]`, no opcode byte).
    ///
    /// If the bot is already in the group (it re-sent op 26 after op 31 / a reset), its old
    /// leaf is removed in the same commit.
    pub fn on_key_package_op26(&mut self, key_package: &[u8]) -> Result<Vec<u8>> {
        let kp = self.parse_key_package(key_package)?;
        let kp_user = credential_user_id(kp.leaf_node().credential());
        if kp_user != Some(self.bot_user_id) {
            return Err(DavePeerError::Rejected(format!(
                "key package is for user {kp_user:?}, expected bot {}",
                self.bot_user_id
            )));
        }

        let (group_id, epoch) = self.group_id_and_epoch()?;

        // Stale leaves of the bot (rejoin after reset) are removed in the same commit,
        // otherwise the group would hold two leaves with the same user id.
        let stale: Vec<LeafNodeIndex> = self
            .peer
            .group()
            .map(|g| {
                g.members()
                    .filter(|m| credential_user_id(&m.credential) == Some(self.bot_user_id))
                    .map(|m| m.index)
                    .collect()
            })
            .unwrap_or_default();

        let mut messages = Vec::new();
        for leaf in stale {
            let msg = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
                leaf,
                group_id.clone(),
                epoch,
                &self.external_signer,
                SenderExtensionIndex::new(0),
            )
            .map_err(|e| mls_err("building external remove", e))?;
            messages.extend(msg.tls_serialize_detached().map_err(|e| mls_err("ser", e))?);
        }
        messages.extend(self.external_add(kp, group_id, epoch)?);
        let proposals = encode_vlbytes(&messages)?;

        // Every in-process member learns the proposals; the peer's commit is the one used.
        self.deliver_proposals_to_extras(&proposals)?;
        let expected = [self.bot_user_id];
        let cw = self
            .peer
            .process_proposals(ProposalsOperationType::APPEND, &proposals, Some(&expected))
            .map_err(|e| mls_err("peer process_proposals", e))?
            .ok_or_else(|| DavePeerError::State("peer produced no commit".into()))?;
        let welcome = cw
            .welcome
            .ok_or_else(|| DavePeerError::State("peer commit has no welcome".into()))?;

        // The peer applies its own commit (davey recognises it and merges the pending
        // commit), other in-process members process it like any foreign commit.
        self.apply_commit(&cw.commit, Some(&welcome))?;

        let tid = self.new_transition_id();
        Ok(with_transition_id(tid, &welcome))
    }

    /// Second-member flow with a simulated member: create an in-process `DaveSession` for
    /// `new_user_id` (it receives op 25 like any client), and return the op 27 payload that
    /// proposes adding its key package. Send op 11 naming `new_user_id` to the bot first.
    pub fn add_member_op27(&mut self, new_user_id: u64) -> Result<Vec<u8>> {
        if new_user_id == self.peer_user_id
            || new_user_id == self.bot_user_id
            || self.extras.iter().any(|m| m.user_id == new_user_id)
        {
            return Err(DavePeerError::State(format!("user {new_user_id} already known")));
        }
        let mut session = DaveSession::new(protocol_version(), new_user_id, self.channel_id, None)
            .map_err(|e| DavePeerError::State(format!("creating member session: {e:?}")))?;
        session
            .set_external_sender(&self.external_sender)
            .map_err(|e| DavePeerError::State(format!("member set_external_sender: {e:?}")))?;
        let kp = session
            .create_key_package()
            .map_err(|e| DavePeerError::State(format!("member key package: {e:?}")))?;
        let op27 = self.propose_add_op27(&kp)?;
        self.extras.push(ExtraMember { user_id: new_user_id, session, joined: false });
        Ok(op27)
    }

    /// Build the op 27 payload (`[0 = append][opaque<V> MLSMessage(external Add)]`, no opcode
    /// byte) for an arbitrary key package (e.g. a second real client), at the current epoch.
    /// In-process members store the proposal too, so they can process the commit that follows.
    pub fn propose_add_op27(&mut self, key_package: &[u8]) -> Result<Vec<u8>> {
        if !matches!(self.peer.status(), SessionStatus::ACTIVE | SessionStatus::AWAITING_RESPONSE)
        {
            return Err(DavePeerError::State(
                "no established group yet (the bot must join via op 26 first)".into(),
            ));
        }
        let kp = self.parse_key_package(key_package)?;
        let (group_id, epoch) = self.group_id_and_epoch()?;
        let proposals = encode_vlbytes(&self.external_add(kp, group_id, epoch)?)?;

        // The bot will commit by *reference* to this proposal, so every member that has to
        // process that commit must have stored the proposal. davey's process_proposals also
        // drafts a commit of its own (a real client races to commit too); it is discarded
        // when the bot's commit is merged.
        self.peer
            .process_proposals(ProposalsOperationType::APPEND, &proposals, None)
            .map_err(|e| mls_err("peer process_proposals", e))?;
        self.deliver_proposals_to_extras(&proposals)?;
        self.uncommitted_adds += 1;

        let mut out = Vec::with_capacity(proposals.len() + 1);
        out.push(PROPOSALS_APPEND);
        out.extend_from_slice(&proposals);
        Ok(out)
    }

    /// Handle op 28 from the bot (payload without opcode byte: commit ‖ optional welcome).
    /// Validates group id / epoch / content type, applies the commit to the peer and all
    /// in-process members (new simulated members consume the welcome) and returns what to
    /// broadcast. Nothing is changed if the commit is refused.
    pub fn on_op28_commit(&mut self, payload: &[u8]) -> Result<(u16, Vec<u8>)> {
        let (commit, welcome) = split_commit_welcome(payload)?;

        let msg = guarded_decode("commit", || MlsMessageIn::tls_deserialize_exact_bytes(commit))?;
        let pm: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|e| DavePeerError::Malformed(format!("commit is not a protocol message: {e:?}")))?;
        let (group_id, epoch) = self.group_id_and_epoch()?;
        if pm.group_id() != &group_id {
            return Err(DavePeerError::Rejected("commit for another group id".into()));
        }
        if pm.epoch() != epoch {
            return Err(DavePeerError::Rejected(format!(
                "commit for epoch {}, group is at {}",
                pm.epoch().as_u64(),
                epoch.as_u64()
            )));
        }
        if pm.content_type() != ContentType::Commit {
            return Err(DavePeerError::Rejected(format!(
                "op 28 carries {:?}, not a commit",
                pm.content_type()
            )));
        }
        if self.uncommitted_adds > 0 && welcome.is_none() {
            return Err(DavePeerError::Rejected("commit adds members but has no welcome".into()));
        }

        self.apply_commit(commit, welcome)?;

        let tid = self.new_transition_id();
        Ok((tid, with_transition_id(tid, commit)))
    }

    /// Decrypt an audio frame the bot sent (payload after transport decryption; check
    /// [`is_e2ee`] first — non-DAVE frames are refused here rather than fed to davey).
    pub fn decrypt(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        if !super::dave::is_e2ee(payload) {
            return Err(DavePeerError::Decrypt("not a DAVE frame (no 0xFAFA marker)".into()));
        }
        self.peer
            .decrypt(self.bot_user_id, MediaType::AUDIO, payload)
            .map_err(|e| DavePeerError::Decrypt(format!("{e:?}")))
    }

    // ---- internals -------------------------------------------------------------------

    /// A serialized external Add proposal for `kp`, signed by the external sender (#0).
    fn external_add(&self, kp: openmls::prelude::KeyPackage, group_id: GroupId, epoch: GroupEpoch) -> Result<Vec<u8>> {
        let add = ExternalProposal::new_add::<OpenMlsRustCrypto>(kp, group_id, epoch, &self.external_signer, SenderExtensionIndex::new(0))
            .map_err(|e| mls_err("building external add", e))?;
        add.tls_serialize_detached().map_err(|e| mls_err("serializing external add", e))
    }

    fn parse_key_package(&self, bytes: &[u8]) -> Result<openmls::prelude::KeyPackage> {
        let kp_in =
            guarded_decode("key package", || KeyPackageIn::tls_deserialize_exact_bytes(bytes))?;
        // Checks the leaf node + key package signatures, lifetime and protocol version.
        let kp = kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| mls_err("key package validation", e))?;
        if kp.ciphersuite() != self.peer.ciphersuite() {
            return Err(DavePeerError::Rejected(format!(
                "key package ciphersuite {:?}",
                kp.ciphersuite()
            )));
        }
        Ok(kp)
    }

    /// Group id the clients derive (channel id, 8 bytes BE) and the peer's current epoch.
    fn group_id_and_epoch(&self) -> Result<(GroupId, GroupEpoch)> {
        let epoch = self
            .peer
            .epoch()
            .ok_or_else(|| DavePeerError::State("peer has no group".into()))?;
        Ok((GroupId::from_slice(&self.channel_id.to_be_bytes()), epoch))
    }

    fn deliver_proposals_to_extras(&mut self, proposals: &[u8]) -> Result<()> {
        for m in self.extras.iter_mut().filter(|m| m.joined) {
            m.session
                .process_proposals(ProposalsOperationType::APPEND, proposals, None)
                .map_err(|e| mls_err("member process_proposals", e))?;
        }
        Ok(())
    }

    /// Apply a commit to every in-process member. The peer goes first: if it refuses the
    /// commit nobody has changed state yet.
    fn apply_commit(&mut self, commit: &[u8], welcome: Option<&[u8]>) -> Result<()> {
        self.peer
            .process_commit(commit)
            .map_err(|e| mls_err("peer process_commit", e))?;
        for m in self.extras.iter_mut() {
            if m.joined {
                m.session
                    .process_commit(commit)
                    .map_err(|e| mls_err("member process_commit", e))?;
            } else if let Some(w) = welcome {
                m.session
                    .process_welcome(w)
                    .map_err(|e| mls_err("member process_welcome", e))?;
                m.joined = true;
            }
        }
        // davey commits every pending proposal, so nothing is left uncommitted.
        self.uncommitted_adds = 0;
        Ok(())
    }

    /// A transition id for op 21 / 29 / 30 (never 0: songbird would not answer op 23).
    pub fn new_transition_id(&mut self) -> u16 {
        // Transition id 0 means "no transition" to songbird (it would not answer op 23).
        let tid = self.next_transition_id;
        self.next_transition_id = self.next_transition_id.checked_add(1).unwrap_or(1);
        tid
    }
}

/// `opaque<V>` encoding (varint length + bytes), as op 27 expects around the proposals.
fn encode_vlbytes(bytes: &[u8]) -> Result<Vec<u8>> {
    VLBytes::new(bytes.to_vec())
        .tls_serialize_detached()
        .map_err(|e| DavePeerError::State(format!("encoding opaque<V>: {e}")))
}

fn with_transition_id(tid: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Split an op 28 payload: one TLS `MLSMessage` (the commit) then, if bytes remain, a
/// bare TLS `Welcome`. Both must parse exactly.
pub fn split_commit_welcome(payload: &[u8]) -> Result<(&[u8], Option<&[u8]>)> {
    let (_, rest) =
        guarded_decode("op 28 commit", || MlsMessageIn::tls_deserialize_bytes(payload))?;
    let commit_len = payload.len() - rest.len();
    let (commit, rest) = payload.split_at(commit_len);
    if rest.is_empty() {
        return Ok((commit, None));
    }
    guarded_decode("op 28 welcome", || Welcome::tls_deserialize_exact_bytes(rest))?;
    Ok((commit, Some(rest)))
}
