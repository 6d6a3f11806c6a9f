//! Line and marker charts as PNG files, with nothing beyond zlib: the report's plots. Axes
//! carry numeric tick labels in a built-in 3x5 digit font; titles, axis names and legends
//! live in the markdown beside the image.

use std::path::Path;

use crate::Result;

pub type Rgb = [u8; 3];

/// Colors for successive series, named for the legend.
pub const PALETTE: [(&str, Rgb); 6] = [
    ("blue", [31, 119, 180]),
    ("orange", [255, 127, 14]),
    ("green", [44, 160, 44]),
    ("red", [214, 39, 40]),
    ("purple", [148, 103, 189]),
    ("brown", [140, 86, 75]),
];

/// One series: points joined by lines, or markers only.
pub struct Series {
    pub points: Vec<(f64, f64)>,
    pub color: Rgb,
    pub markers: bool,
}

pub struct Chart {
    pub width: usize,
    pub height: usize,
    pub series: Vec<Series>,
    /// Log scale on x (for training fractions).
    pub log_x: bool,
}

const MARGIN_LEFT: usize = 48;
const MARGIN_BOTTOM: usize = 24;
const MARGIN: usize = 12;

/// 3x5 glyphs for tick labels: each row's 3 bits, top row first.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A 2-pixel-wide line (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn marker(&mut self, (x, y): (i64, i64), c: Rgb) {
        for dx in -3..=3 {
            for dy in -3..=3 {
                self.set(x + dx, y + dy, c);
            }
        }
    }

    /// Text of tick-label characters, scaled 2x, top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            if let Some(rows) = glyph(ch) {
                for (r, bits) in rows.iter().enumerate() {
                    for col in 0..3 {
                        if bits & (4 >> col) != 0 {
                            for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                                self.set(x + i as i64 * 8 + col * 2 + ox, y + r as i64 * 2 + oy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

impl Chart {
    /// The chart as RGB pixels, row after row.
    pub fn render(&self) -> Vec<u8> {
        let mut c = Canvas::new(self.width, self.height);
        let tx = |x: f64| if self.log_x { x.max(1e-12).log10() } else { x };
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = all.iter().fold(
            (
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ),
            |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
        );
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if self.log_x {
            // Training fractions: always show 1% to 100%.
            (x0, x1) = (x0.min(-2.0), x1.max(0.0));
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if y1 - y0 < 1e-12 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
        let (left, right) = (MARGIN_LEFT as f64, (self.width - MARGIN) as f64);
        let (top, bottom) = (MARGIN as f64, (self.height - MARGIN_BOTTOM) as f64);
        let px = |x: f64, y: f64| {
            (
                (left + (tx(x) - x0) / (x1 - x0) * (right - left)).round() as i64,
                (bottom - (y - y0) / (y1 - y0) * (bottom - top)).round() as i64,
            )
        };
        let grey = [200, 200, 200];
        let ink = [60, 60, 60];
        for i in 0..=4 {
            let y = y0 + (y1 - y0) * i as f64 / 4.0;
            let (_, yy) = px(if self.log_x { 10f64.powf(x0) } else { x0 }, y);
            c.line((left as i64, yy), (right as i64, yy), grey);
            c.text(2, yy - 5, &label(y), ink);
            let xv = x0 + (x1 - x0) * i as f64 / 4.0;
            let shown = if self.log_x { 10f64.powf(xv) } else { xv };
            let (xx, _) = px(shown, y0);
            c.line((xx, top as i64), (xx, bottom as i64), grey);
            c.text(xx - 12, bottom as i64 + 6, &label(shown), ink);
        }
        c.line(
            (left as i64, bottom as i64),
            (right as i64, bottom as i64),
            ink,
        );
        c.line((left as i64, top as i64), (left as i64, bottom as i64), ink);
        for s in &self.series {
            let pts: Vec<(i64, i64)> = s
                .points
                .iter()
                .filter(|(x, y)| tx(*x).is_finite() && y.is_finite())
                .map(|&(x, y)| px(x, y))
                .collect();
            if s.markers || pts.len() == 1 {
                pts.iter().for_each(|&p| c.marker(p, s.color));
            } else {
                pts.windows(2).for_each(|w| c.line(w[0], w[1], s.color));
            }
        }
        c.px
    }

    /// Writes the chart as an RGB PNG (owner-only, temporary name then rename).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &encode_png(self.width, self.height, &self.render()))
    }
}

/// A truecolor PNG of `rgb` pixels.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(height * (width * 3 + 1));
    for row in rgb.chunks(width * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    };
    let mut header = Vec::new();
    header.extend_from_slice(&(width as u32).to_be_bytes());
    header.extend_from_slice(&(height as u32).to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &header);
    chunk(
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_land_where_the_data_says() {
        let chart = Chart {
            width: 200,
            height: 120,
            series: vec![Series {
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                color: [255, 0, 0],
                markers: false,
            }],
            log_x: false,
        };
        let px = chart.render();
        let at = |x: usize, y: usize| &px[(y * 200 + x) * 3..(y * 200 + x) * 3 + 3];
        // The diagonal starts near the bottom-left corner of the plot area and ends top-right.
        let red = [255u8, 0, 0];
        let near = |x: usize, y: usize| {
            (x - 2..=x + 2).any(|xx| (y - 2..=y + 2).any(|yy| at(xx, yy) == red))
        };
        assert!(near(MARGIN_LEFT, 120 - MARGIN_BOTTOM - 5));
        assert!(near(200 - MARGIN, MARGIN + 5));
        assert!(
            !near(MARGIN_LEFT + 5, MARGIN + 5),
            "nothing red in the top-left"
        );
    }

    #[test]
    fn png_has_valid_chunks() {
        let png = encode_png(2, 1, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
