//! M3U and PLS playlists (text): entries and their titles.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As written in the file (absolute or relative).
    pub location: String,
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Playlist {
    pub name: Option<String>,
    pub entries: Vec<Entry>,
}

/// Parses an (extended) M3U playlist of links (HLS playlists are told apart before this).
pub fn parse_m3u(text: &str) -> Playlist {
    let mut list = Playlist::default();
    let mut title = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(info) = line.strip_prefix("#EXTINF:") {
            title = info.split_once(',').map(|(_, t)| t.trim().to_string()).filter(|t| !t.is_empty());
        } else if let Some(name) = line.strip_prefix("#PLAYLIST:") {
            list.name = Some(name.trim().to_string()).filter(|n| !n.is_empty());
        } else if !line.starts_with('#') {
            list.entries.push(Entry { location: line.to_string(), title: title.take() });
        }
    }
    list
}

/// Parses a PLS playlist (`FileN=`, `TitleN=`), in entry-number order.
pub fn parse_pls(text: &str) -> Playlist {
    let mut files: Vec<(u32, String)> = Vec::new();
    let mut titles: Vec<(u32, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if let Some(n) = key.strip_prefix("file").and_then(|n| n.parse().ok()) {
            files.push((n, value));
        } else if let Some(n) = key.strip_prefix("title").and_then(|n| n.parse().ok()) {
            titles.push((n, value));
        }
    }
    files.sort_by_key(|(n, _)| *n);
    let entries = files
        .into_iter()
        .map(|(n, location)| Entry {
            location,
            title: titles.iter().find(|(m, _)| *m == n).map(|(_, t)| t.clone()).filter(|t| !t.is_empty()),
        })
        .collect();
    Playlist { name: None, entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_m3u() {
        let text = "#EXTM3U\n#PLAYLIST:Evening\n#EXTINF:3,Band - First\nhttp://a/1.mp3\n\n# comment\nrel/2.ogg\n#EXTINF:-1,\nhttps://b/3\n";
        let p = parse_m3u(text);
        assert_eq!(p.name.as_deref(), Some("Evening"));
        assert_eq!(
            p.entries,
            vec![
                Entry { location: "http://a/1.mp3".into(), title: Some("Band - First".into()) },
                Entry { location: "rel/2.ogg".into(), title: None },
                Entry { location: "https://b/3".into(), title: None },
            ]
        );
    }

    #[test]
    fn pls_in_number_order() {
        let text = "[playlist]\nFile2=http://b\nTitle2=Second\nFile1=http://a\nNumberOfEntries=2\nVersion=2\n";
        let p = parse_pls(text);
        assert_eq!(p.entries[0], Entry { location: "http://a".into(), title: None });
        assert_eq!(p.entries[1], Entry { location: "http://b".into(), title: Some("Second".into()) });
    }
}
