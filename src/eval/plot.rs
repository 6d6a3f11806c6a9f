//! Line and marker charts as PNG files, with nothing beyond zlib: the report's plots. Axes
//! carry numeric tick labels in a built-in 3x5 digit font; titles, axis names and legends
//! live in the markdown beside the image.

use std::path::Path;

use crate::Result;

pub type Rgb = [u8; 3];

/// Colors for successive series, named for the legend.
pub const PALETTE: [(&str, Rgb); 10] = [
    ("blue", [31, 119, 180]),
    ("orange", [255, 127, 14]),
    ("green", [44, 160, 44]),
    ("red", [214, 39, 40]),
    ("purple", [148, 103, 189]),
    ("brown", [140, 86, 75]),
    ("pink", [227, 119, 194]),
    ("gray", [127, 127, 127]),
    ("olive", [188, 189, 34]),
    ("cyan", [23, 190, 207]),
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
    /// Log scale on x (for training fractions, ticked at the paper's fractions).
    pub log_x: bool,
    /// A fixed y range (metrics: 0 to 1); otherwise round ticks around the data.
    pub y_range: Option<(f64, f64)>,
}

/// The training fractions the paper reports, as x ticks on a log axis.
const FRACTION_TICKS: [f64; 5] = [0.01, 0.05, 0.1, 0.25, 1.0];

/// Round tick values covering `lo..=hi`: steps of 1, 2, 2.5 or 5 times a power of ten, about
/// `target` intervals.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    // A flat range is widened by half a unit, or by a relative step where a unit is lost
    // in the rounding of large values.
    let pad = (lo.abs() * 1e-9).max(0.5);
    let (lo, hi) = if hi - lo < 1e-12 {
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    };
    let raw = ((hi - lo) / target.max(1) as f64).max(1e-12);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil().max(first + 1.0);
    let ticks: Vec<f64> = (0..=(last - first) as usize)
        .map(|i| (first + i as f64) * step)
        .collect();
    // Values so large that the step vanishes beside them: the two ends.
    if ticks.len() < 2 || ticks[ticks.len() - 1] <= ticks[0] {
        return vec![lo, hi.max(lo + pad)];
    }
    ticks
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

/// A tick label with as many decimals as the tick step needs.
fn label(v: f64, step: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else if v.fract() == 0.0 && step.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.abs().max(1e-12).log10().floor()).max(0.0) as usize + 1;
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn step_of(ticks: &[f64]) -> f64 {
    ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min)
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
        if let Some(range) = self.y_range {
            (y0, y1) = (y0.min(range.0), y1.max(range.1));
        }
        let y_ticks = nice_ticks(y0, y1, 4);
        let x_ticks = if self.log_x {
            // Training fractions: always show 1% to 100%.
            FRACTION_TICKS.to_vec()
        } else {
            nice_ticks(x0, x1, 4)
        };
        (y0, y1) = (y_ticks[0], y_ticks[y_ticks.len() - 1]);
        (x0, x1) = (tx(x_ticks[0]), tx(x_ticks[x_ticks.len() - 1]));
        if self.log_x {
            (x0, x1) = all
                .iter()
                .fold((x0, x1), |(a, b), p| (a.min(p.0), b.max(p.0)));
        }
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
        for &y in &y_ticks {
            let (_, yy) = px(x_ticks[0], y);
            c.line((left as i64, yy), (right as i64, yy), grey);
            c.text(2, yy - 5, &label(y, step_of(&y_ticks)), ink);
        }
        for &x in &x_ticks {
            let (xx, _) = px(x, y0);
            c.line((xx, top as i64), (xx, bottom as i64), grey);
            c.text(
                xx - 12,
                bottom as i64 + 6,
                &label(x, step_of(&x_ticks)),
                ink,
            );
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
            y_range: None,
        };
        let px = chart.render();
        let at = |x: usize, y: usize| &px[(y * 200 + x) * 3..(y * 200 + x) * 3 + 3];
        // The diagonal starts near the bottom-left corner of the plot area and ends top-right.
        let red = [255u8, 0, 0];
        let near = |x: usize, y: usize| {
            (x - 2..=x + 2).any(|xx| (y - 2..=y + 2).any(|yy| at(xx, yy) == red))
        };
        // Round ticks from 0 to 1: the line runs corner to corner of the plot area.
        assert!(near(MARGIN_LEFT + 2, 120 - MARGIN_BOTTOM - 2));
        assert!(near(200 - MARGIN - 2, MARGIN + 2));
        assert!(
            !near(MARGIN_LEFT + 5, MARGIN + 5),
            "nothing red in the top-left"
        );
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        assert_eq!(nice_ticks(0.0, 1.0, 4), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(nice_ticks(4.3, 11.3, 4), [4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(nice_ticks(1.0, 30.0, 4), [0.0, 10.0, 20.0, 30.0]);
        let t = nice_ticks(-0.043, 0.898, 4);
        assert!(t[0] <= -0.043 && *t.last().unwrap() >= 0.898, "{t:?}");
        assert_eq!(nice_ticks(5.0, 5.0, 4), [4.5, 4.75, 5.0, 5.25, 5.5]);
        let huge = nice_ticks(1e17, 1e17, 4);
        assert!(
            huge.len() >= 2 && huge[huge.len() - 1] > huge[0],
            "{huge:?}"
        );
        // Labels carry the decimals the step needs.
        assert_eq!(label(2.34565, 0.00005), "2.34565");
        assert_eq!(label(0.25, 0.25), "0.25");
        assert_eq!(label(20.0, 10.0), "20");
    }

    #[test]
    fn png_has_valid_chunks() {
        let png = encode_png(2, 1, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
