//! caldera-protocol: the only thing the gateway and its workers share.
//!
//! Data and codec only (STYLE §1): the IPC messages ([`messages`]), their framing ([`frame`]),
//! build identity ([`build`]) and crash evidence ([`evidence`]). The tokio adapter sits behind the
//! `tokio` feature.

pub mod build;
pub mod evidence;
pub mod frame;
pub mod messages;
pub mod track;

#[cfg(feature = "tokio")]
pub mod channel;

pub use frame::{Encoded, FrameDecoder, FrameError, HELLO_MAX_FRAME_LEN, MAX_FRAME_LEN};
pub use messages::*;
pub use track::{TrackData, TrackError, TrackInfo};
