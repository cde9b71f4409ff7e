//! Sealing an event's personal fields with its subject's key, and opening them (design §10;
//! `docs/envelope.md` has the bytes): the sealed form ([`SealedFields`]), what became of the
//! fields ([`Personal`]), the associated data a sealed form is bound to, and the rebuild's
//! deferred opening.

use serde::{Deserialize, Serialize};

use super::catalogue::strict_from_bytes;
use super::{DecodeError, Event, RecordedEvent};
use crate::crypto::{DataKey, KeyLookup, Keyring};
use crate::ids::StreamId;

/// An event's personal fields, sealed (design §10; `crate::crypto`). The payload holds them
/// blanked; the plaintext sealed here is the postcard of their values (`Vec<Option<String>>`,
/// in the catalogue's personal-field order), AES-256-GCM with the subject's key at
/// `epoch`, bound (as associated data) to the event id, the epoch, the stream, the type and its
/// schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFields {
    /// The subject's key epoch.
    pub epoch: u32,
    /// A random nonce.
    pub nonce: [u8; crate::crypto::NONCE_LEN],
    /// The ciphertext and its 16-byte tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// What became of an event's personal fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Personal {
    /// Not sealed: the event has no personal fields, is not on a subject's stream, or was
    /// written in the clear (before envelope format 3).
    #[default]
    Clear,
    /// Sealed, and opened with the subject's key.
    Sealed {
        /// The key's epoch.
        epoch: u32,
    },
    /// Sealed with a key an erasure destroyed: the fields hold blanks.
    Erased {
        /// The key's epoch.
        epoch: u32,
        /// The erasure's position.
        erased_at: u64,
        /// The blanked fields.
        fields: Vec<String>,
    },
    /// Sealed with a key this reader does not have (a tool run without the key store): the
    /// fields hold blanks.
    Locked {
        /// The key's epoch.
        epoch: u32,
        /// The blanked fields.
        fields: Vec<String>,
    },
}

impl Personal {
    /// True for [`Personal::Clear`].
    pub fn is_clear(&self) -> bool {
        matches!(self, Personal::Clear)
    }
}

/// The associated data a sealed form is bound to: `event_id ‖ epoch (LE) ‖ stream ‖ 0 ‖
/// event_type ‖ 0 ‖ schema_version (LE)`, on the stack when it fits (every real one does).
struct SealAad {
    buffer: [u8; 160],
    len: usize,
    spilled: Vec<u8>,
}

impl SealAad {
    fn new(
        event_id: &[u8; 16],
        epoch: u32,
        stream: &str,
        event_type: &str,
        schema: u16,
    ) -> SealAad {
        let parts: [&[u8]; 7] = [
            event_id,
            &epoch.to_le_bytes(),
            stream.as_bytes(),
            &[0],
            event_type.as_bytes(),
            &[0],
            &schema.to_le_bytes(),
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut aad = SealAad {
            buffer: [0; 160],
            len,
            spilled: Vec::new(),
        };
        if len <= aad.buffer.len() {
            let mut at = 0;
            for part in parts {
                aad.buffer[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
        } else {
            aad.spilled = parts.concat();
        }
        aad
    }

    fn bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.buffer[..self.len]
        } else {
            &self.spilled
        }
    }
}

/// What a sealed form is bound to (its associated data), from its envelope.
pub(super) struct SealId<'a> {
    pub(super) stream: &'a str,
    pub(super) event_id: &'a [u8; 16],
    pub(super) event_type: &'a str,
    pub(super) schema_version: u16,
}

/// Opens sealed personal fields into `event` (blanks stay when the key is destroyed or not at
/// hand).
pub(super) fn open_fields(
    id: &SealId<'_>,
    epoch: u32,
    nonce: &[u8; crate::crypto::NONCE_LEN],
    ciphertext: Vec<u8>,
    event: &mut Event,
    keys: &Keyring,
) -> Result<Personal, DecodeError> {
    let fields = || {
        event
            .personal_field_names()
            .iter()
            .map(|f| (*f).to_owned())
            .collect()
    };
    let key = match keys.lookup(id.stream, epoch) {
        KeyLookup::Live(key) => key,
        KeyLookup::Destroyed { position } => {
            return Ok(Personal::Erased {
                epoch,
                erased_at: position,
                fields: fields(),
            })
        }
        KeyLookup::Unknown if keys.is_strict() => {
            return Err(DecodeError::KeyMissing {
                stream: id.stream.to_owned(),
                epoch,
            })
        }
        KeyLookup::Unknown => {
            return Ok(Personal::Locked {
                epoch,
                fields: fields(),
            })
        }
    };
    let failed = |reason: String| DecodeError::Sealed {
        stream: id.stream.to_owned(),
        epoch,
        reason,
    };
    let aad = SealAad::new(
        id.event_id,
        epoch,
        id.stream,
        id.event_type,
        id.schema_version,
    );
    // Not wiped: the texts live on in the event (and the projection) anyway.
    let plaintext = key
        .open(nonce, ciphertext, aad.bytes())
        .ok_or_else(|| failed("the tag does not verify (damaged, or not this event's)".into()))?;
    let values: Vec<Option<String>> =
        strict_from_bytes(&plaintext).map_err(|e| failed(e.to_string()))?;
    event.put_personal(values).map_err(failed)?;
    Ok(Personal::Sealed { epoch })
}

/// Sealed fields left to open later (the rebuild opens them on its applying thread, which has
/// time to spare while the decoding one is the pipeline's bound).
#[derive(Debug)]
pub(crate) struct DeferredSeal {
    epoch: u32,
    nonce: [u8; crate::crypto::NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl DeferredSeal {
    pub(super) fn new(
        epoch: u32,
        nonce: [u8; crate::crypto::NONCE_LEN],
        ciphertext: &[u8],
    ) -> DeferredSeal {
        DeferredSeal {
            epoch,
            nonce,
            ciphertext: ciphertext.to_vec(),
        }
    }
}

/// Opens the sealed fields [`super::decode_record_deferred`] left in `event`.
///
/// # Errors
/// As [`super::decode_record`]'s for sealed fields.
pub(crate) fn open_deferred(
    event: &mut RecordedEvent,
    deferred: DeferredSeal,
    keys: &Keyring,
) -> Result<(), DecodeError> {
    let stream = event.stream.to_string();
    let event_id = *event.event_id.as_bytes();
    let id = SealId {
        stream: &stream,
        event_id: &event_id,
        event_type: event.event.type_name(),
        schema_version: event.schema_version,
    };
    event.personal = open_fields(
        &id,
        deferred.epoch,
        &deferred.nonce,
        deferred.ciphertext,
        &mut event.event,
        keys,
    )?;
    Ok(())
}

/// Takes `event`'s personal fields out and seals them with `key` (at `epoch`): the event with
/// those fields blanked, and the sealed form.
///
/// # Errors
/// Postcard's (never for the catalogue's values); a sealing failure (only for plaintexts of
/// gigabytes) as `SerializeBufferFull`.
pub(super) fn seal_fields(
    event: &Event,
    event_id: &[u8; 16],
    stream: &StreamId,
    epoch: u32,
    key: &DataKey,
) -> Result<(Event, SealedFields), postcard::Error> {
    let mut blanked = event.clone();
    let values = blanked.take_personal();
    let plaintext = postcard::to_stdvec(&values)?;
    let stream = stream.to_string();
    let aad = SealAad::new(
        event_id,
        epoch,
        &stream,
        event.type_name(),
        event.schema_version(),
    );
    let (nonce, ciphertext) = key
        .seal(plaintext, aad.bytes())
        .map_err(|_| postcard::Error::SerializeBufferFull)?;
    Ok((
        blanked,
        SealedFields {
            epoch,
            nonce,
            ciphertext,
        },
    ))
}
