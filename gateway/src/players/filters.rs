//! The `filters` object of a player update: parsing, Lavalink's validation and the
//! config switches (lavalink-internals §1.7).
//!
//! What Lavalink does with odd values, followed here: equalizer bands outside 0–14 are ignored
//! and gains are clamped to −0.25…1.0 (Lavaplayer's equalizer); a tremolo/vibrato frequency ≤ 0,
//! a vibrato frequency > 14, a depth outside 0…1 or a timescale speed/pitch/rate ≤ 0 is refused
//! (lavadsp throws for them), as is a negative volume and any non-finite number. `pluginFilters`
//! are accepted and ignored.

use crate::config::FiltersConfig;
use caldera_protocol::{Distortion, Filters, Karaoke, Lfo, Timescale};
use serde_json::Value;

/// Parses and validates; `Err` is the 400 message.
pub fn parse(value: &Value, config: &FiltersConfig) -> Result<Filters, String> {
    let obj = value.as_object().ok_or("filters must be a JSON object")?;
    let present = |name: &str| obj.get(name).is_some_and(|v| !v.is_null());
    let disabled: Vec<&str> = config.list().into_iter().filter(|(name, on)| !on && present(name)).map(|(name, _)| name).collect();
    if !disabled.is_empty() {
        return Err(format!("Following filters are disabled in the config: {}", disabled.join(", ")));
    }
    let mut f = Filters::default();
    if let Some(v) = obj.get("volume").filter(|v| !v.is_null()) {
        let v = number(v, "volume")?;
        if v < 0.0 {
            return Err(format!("volume must not be negative, got {v}"));
        }
        f.volume = Some(v as f32);
    }
    if let Some(bands) = obj.get("equalizer").filter(|v| !v.is_null()) {
        let bands = bands.as_array().ok_or("equalizer must be an array of {band, gain}")?;
        for b in bands {
            let band = b.get("band").and_then(Value::as_i64).ok_or("equalizer band must be an integer")?;
            let gain = number(b.get("gain").unwrap_or(&Value::Null), "equalizer gain")?;
            if (0..15).contains(&band) {
                f.equalizer.retain(|(n, _)| *n != band as u8);
                f.equalizer.push((band as u8, gain.clamp(-0.25, 1.0) as f32));
            }
        }
    }
    if let Some(k) = obj.get("karaoke").filter(|v| !v.is_null()) {
        f.karaoke = Some(Karaoke {
            level: field(k, "level", 1.0)?,
            mono_level: field(k, "monoLevel", 1.0)?,
            filter_band: field(k, "filterBand", 220.0)?,
            filter_width: field(k, "filterWidth", 100.0)?,
        });
    }
    if let Some(t) = obj.get("timescale").filter(|v| !v.is_null()) {
        let ts = Timescale { speed: field(t, "speed", 1.0)?, pitch: field(t, "pitch", 1.0)?, rate: field(t, "rate", 1.0)? };
        for (name, v) in [("speed", ts.speed), ("pitch", ts.pitch), ("rate", ts.rate)] {
            if v <= 0.0 {
                return Err(format!("timescale.{name} must be greater than 0, got {v}"));
            }
        }
        f.timescale = Some(ts);
    }
    for (name, max) in [("tremolo", None), ("vibrato", Some(14.0))] {
        if let Some(t) = obj.get(name).filter(|v| !v.is_null()) {
            let lfo = Lfo { frequency: field(t, "frequency", 2.0)?, depth: field(t, "depth", 0.5)? };
            if lfo.frequency <= 0.0 || max.is_some_and(|m| lfo.frequency > m) {
                return Err(format!("{name}.frequency must be > 0{}, got {}", if max.is_some() { " and <= 14" } else { "" }, lfo.frequency));
            }
            if !(0.0..=1.0).contains(&lfo.depth) {
                return Err(format!("{name}.depth must be between 0 and 1, got {}", lfo.depth));
            }
            if name == "tremolo" { f.tremolo = Some(lfo) } else { f.vibrato = Some(lfo) }
        }
    }
    if let Some(d) = obj.get("distortion").filter(|v| !v.is_null()) {
        f.distortion = Some(Distortion {
            sin_offset: field(d, "sinOffset", 0.0)?,
            sin_scale: field(d, "sinScale", 1.0)?,
            cos_offset: field(d, "cosOffset", 0.0)?,
            cos_scale: field(d, "cosScale", 1.0)?,
            tan_offset: field(d, "tanOffset", 0.0)?,
            tan_scale: field(d, "tanScale", 1.0)?,
            offset: field(d, "offset", 0.0)?,
            scale: field(d, "scale", 1.0)?,
        });
    }
    if let Some(r) = obj.get("rotation").filter(|v| !v.is_null()) {
        f.rotation = Some(field::<f64>(r, "rotationHz", 0.0)?);
    }
    if let Some(m) = obj.get("channelMix").filter(|v| !v.is_null()) {
        f.channel_mix = Some([field(m, "leftToLeft", 1.0)?, field(m, "leftToRight", 0.0)?, field(m, "rightToLeft", 0.0)?, field(m, "rightToRight", 1.0)?]);
    }
    if let Some(l) = obj.get("lowPass").filter(|v| !v.is_null()) {
        f.low_pass = Some(field(l, "smoothing", 20.0)?);
    }
    Ok(f)
}

fn number(v: &Value, name: &str) -> Result<f64, String> {
    v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("{name} must be a finite number"))
}

/// An optional numeric field of a filter object, with its Lavalink default.
fn field<T: FromF64>(obj: &Value, key: &str, default: f64) -> Result<T, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(T::from_f64(default)),
        Some(v) => number(v, key).map(T::from_f64),
    }
}

trait FromF64 {
    fn from_f64(v: f64) -> Self;
}

impl FromF64 for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl FromF64 for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_on() -> FiltersConfig {
        FiltersConfig::default()
    }

    #[test]
    fn lavalink_validation_rules() {
        // Clamped / ignored like Lavaplayer's equalizer.
        let f = parse(&json!({"equalizer": [{"band": 3, "gain": 2.0}, {"band": 15, "gain": 0.5}, {"band": -1, "gain": 0.5}, {"band": 4, "gain": -1.0}]}), &all_on()).unwrap();
        assert_eq!(f.equalizer, vec![(3, 1.0), (4, -0.25)]);
        // Refused like lavadsp's setters.
        for bad in [
            json!({"tremolo": {"frequency": 0.0, "depth": 0.5}}),
            json!({"tremolo": {"frequency": 2.0, "depth": 1.5}}),
            json!({"vibrato": {"frequency": 15.0, "depth": 0.5}}),
            json!({"vibrato": {"frequency": -1.0}}),
            json!({"volume": -0.5}),
            json!({"volume": "loud"}),
            json!({"channelMix": {"leftToLeft": "x"}}),
            json!([1, 2]),
        ] {
            assert!(parse(&bad, &all_on()).is_err(), "{bad}");
        }
        assert!(parse(&json!({"timescale": {"speed": 0.0}}), &all_on()).unwrap_err().contains("timescale.speed"));
        assert!(parse(&json!({"timescale": {"pitch": -1.0}}), &all_on()).is_err());
        let f = parse(&json!({"timescale": {"pitch": 2.0}}), &all_on()).unwrap();
        assert_eq!(f.timescale, Some(Timescale { speed: 1.0, pitch: 2.0, rate: 1.0 }));
        // Omitted fields take Lavalink's defaults; null filters are off; pluginFilters ignored.
        let f = parse(&json!({"karaoke": {}, "rotation": null, "pluginFilters": {"x": 1}}), &all_on()).unwrap();
        assert_eq!(f.karaoke, Some(Karaoke { level: 1.0, mono_level: 1.0, filter_band: 220.0, filter_width: 100.0 }));
        assert_eq!(f.rotation, None);
    }

    #[test]
    fn disabled_filters_are_refused_by_name() {
        let config = FiltersConfig { karaoke: false, low_pass: false, ..Default::default() };
        let err = parse(&json!({"karaoke": {}, "lowPass": {"smoothing": 5}, "volume": 1.0}), &config).unwrap_err();
        assert_eq!(err, "Following filters are disabled in the config: karaoke, lowPass");
        assert!(parse(&json!({"volume": 0.8}), &config).is_ok());
    }
}
