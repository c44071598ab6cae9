//! Charts for reports, each written as PNG and SVG (plotters). Text is drawn with the
//! bundled DejaVu Sans, so rendering needs no system fonts or fontconfig.

use anyhow::{Context, Result, anyhow};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Colours of series, in order (Tableau 10: distinguishable and colour-blind friendly).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registered = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
        assert!(
            registered.is_ok(),
            "the bundled DejaVu Sans is a valid font"
        );
    });
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Something that can draw itself on any plotters backend.
pub trait Chart {
    /// Pixel size of the PNG (and the SVG's view box).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Writes `<stem>.png` and `<stem>.svg`, each atomically; returns the two paths.
pub fn save(chart: &impl Chart, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let dir = png.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let err = |e: String| anyhow!("cannot draw {}: {e}", png.display());
    // The bitmap backend writes to a path: draw to a temp file beside it, then rename.
    let tmp = tempfile::Builder::new()
        .suffix(".png")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    {
        let area = BitMapBackend::new(tmp.path(), chart.size()).into_drawing_area();
        chart.draw(&area).map_err(|e| err(e.to_string()))?;
        area.present().map_err(|e| err(e.to_string()))?;
    }
    tmp.persist(&png)
        .with_context(|| format!("cannot write {}", png.display()))?;
    let mut text = String::new();
    {
        let area = SVGBackend::with_string(&mut text, chart.size()).into_drawing_area();
        chart.draw(&area).map_err(|e| err(e.to_string()))?;
        area.present().map_err(|e| err(e.to_string()))?;
    }
    crate::atomic::write(&svg, text.as_bytes())?;
    Ok([png, svg])
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// The series labels of a chart, in one style for every chart.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(150, 150, 150))
        .label_font(font(12))
        .position(position)
        .draw()
}

/// One horizontal bar per category (e.g. per layer, first at the top, so long layer names
/// stay readable), with an optional vertical reference line (e.g. the network average).
pub struct Bars {
    pub title: String,
    pub value_label: String,
    pub categories: Vec<String>,
    pub values: Vec<f64>,
    pub color: RGBColor,
    /// Drawn as a vertical line and named in the legend.
    pub reference: Option<(String, f64)>,
}

impl Chart for Bars {
    fn size(&self) -> (u32, u32) {
        (900, self.categories.len() as u32 * 16 + 130)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        area.fill(&WHITE)?;
        let n = self.categories.len() as i32;
        let top = self.values.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.12;
        let longest = self
            .categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(4);
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(longest as u32 * 7 + 16)
            .build_cartesian_2d(0.0..top, (0..n).into_segmented())?;
        let names = &self.categories;
        // Row i from the bottom shows category n-1-i: the first category is on top.
        let name_at = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) if (0..n).contains(i) => names[(n - 1 - i) as usize].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE.mix(0.0))
            .y_labels(names.len())
            .y_label_formatter(&name_at)
            .x_desc(&self.value_label)
            .label_style(font(12))
            .axis_desc_style(font(14))
            .draw()?;
        chart.draw_series(self.values.iter().enumerate().map(|(i, &v)| {
            let row = n - 1 - i as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (v, SegmentValue::Exact(row + 1)),
                ],
                self.color.filled(),
            );
            bar.set_margin(2, 2, 0, 0);
            bar
        }))?;
        if let Some((label, mean)) = &self.reference {
            chart
                .draw_series(LineSeries::new(
                    [
                        (*mean, SegmentValue::Exact(0)),
                        (*mean, SegmentValue::Exact(n)),
                    ],
                    BLACK.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(2)));
            legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        Ok(())
    }
}

/// Grouped bars: for each bin (e.g. a bit-width) one bar per series.
pub struct GroupedBars {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub bins: Vec<String>,
    /// (name, one value per bin)
    pub series: Vec<(String, Vec<f64>)>,
}

impl Chart for GroupedBars {
    fn size(&self) -> (u32, u32) {
        (720, 460)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        area.fill(&WHITE)?;
        let n = self.bins.len() as i32;
        let top = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().cloned())
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(20))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..top)?;
        let bins = &self.bins;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_labels(bins.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => bins.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        // Each bin is one unit wide on the segmented axis; series split it in pixels.
        let groups = self.series.len().max(1) as u32;
        let px_per_bin = chart.plotting_area().dim_in_pixel().0 / self.bins.len().max(1) as u32;
        let slot = (px_per_bin.saturating_sub(12) / groups).max(1);
        for (s, (name, values)) in self.series.iter().enumerate() {
            let c = color(s);
            let left = 6 + slot * s as u32;
            let right = px_per_bin.saturating_sub(left + slot);
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let i = i as i32;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v),
                        ],
                        c.filled(),
                    );
                    bar.set_margin(0, 0, left, right);
                    bar
                }))?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// A line series on one panel: name, colour, points, and whether to mark each point.
pub struct Line {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
}

/// One panel of a [`Panels`] figure.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub lines: Vec<Line>,
}

/// Line charts on a grid of panels sharing one x axis meaning (e.g. mini-epochs), with
/// optional vertical separators (e.g. where one training stage hands over to the next).
pub struct Panels {
    pub title: String,
    pub x_label: String,
    pub columns: usize,
    pub panels: Vec<Panel>,
    /// (x, label): drawn as thin vertical lines with the label at the top.
    pub separators: Vec<(f64, String)>,
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs().max(1e-3) * 1e-3);
    (lo - pad)..(hi + pad)
}

impl Chart for Panels {
    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns.max(1)) as u32;
        (1100, 60 + 380 * rows)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        area.fill(&WHITE)?;
        let area = area.titled(&self.title, font(22))?;
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols);
        let cells = area.split_evenly((rows, cols));
        let all_x = self
            .panels
            .iter()
            .flat_map(|p| p.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
        let (x0, x1) = all_x.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let xr = if x0.is_finite() {
            (x0.min(0.0))..(x1 + 0.5)
        } else {
            0.0..1.0
        };
        for (panel, cell) in self.panels.iter().zip(cells.iter()) {
            let ys = panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1));
            let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
            let yr = padded(y0, y1);
            let mut chart = ChartBuilder::on(cell)
                .caption(&panel.title, font(17))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(xr.clone(), yr.clone())?;
            chart
                .configure_mesh()
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_desc(&self.x_label)
                .y_desc(&panel.y_label)
                .label_style(font(12))
                .axis_desc_style(font(13))
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (x, label) in &self.separators {
                chart.draw_series(LineSeries::new(
                    [(*x, yr.start), (*x, yr.end)],
                    RGBColor(190, 190, 190).stroke_width(1),
                ))?;
                chart.draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x + 0.1, yr.end - (yr.end - yr.start) * 0.02),
                    font(11).color(&RGBColor(110, 110, 110)),
                )))?;
            }
            for line in &panel.lines {
                let c = line.color;
                let drawn =
                    chart.draw_series(LineSeries::new(line.points.clone(), c.stroke_width(2)))?;
                if !line.name.is_empty() {
                    drawn.label(line.name.as_str()).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                }
                if line.markers {
                    chart
                        .draw_series(line.points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
                }
            }
            if panel.lines.iter().any(|l| !l.name.is_empty()) {
                legend(&mut chart, SeriesLabelPosition::UpperRight)?;
            }
        }
        Ok(())
    }
}

/// One point of an accuracy-vs-cost scatter.
pub struct Candidate {
    pub label: String,
    /// Lower is better (a score or metric).
    pub cost: f64,
    /// Higher is better (an accuracy).
    pub quality: f64,
}

/// Indices of the points no other point beats on both axes, by increasing cost.
pub fn pareto_front(points: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| {
        points[a]
            .cost
            .total_cmp(&points[b].cost)
            .then(points[b].quality.total_cmp(&points[a].quality))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in order {
        if points[i].quality > best {
            best = points[i].quality;
            front.push(i);
        }
    }
    front
}

/// Accuracy against cost, each point labelled, the Pareto front joined and highlighted.
pub struct Pareto {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<Candidate>,
}

impl Chart for Pareto {
    fn size(&self) -> (u32, u32) {
        (860, 600)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        area.fill(&WHITE)?;
        let (x0, x1) = self
            .points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.cost), b.max(p.cost))
            });
        let (y0, y1) = self
            .points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.quality), b.max(p.quality))
            });
        let (xr, yr) = (padded(x0, x1), padded(y0, y1));
        // Room on the right for the labels of the rightmost points.
        let xr = xr.start..(xr.end + (xr.end - xr.start) * 0.25);
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(20))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(xr, yr)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        let front = pareto_front(&self.points);
        let grey = RGBColor(120, 120, 120);
        let red = color(3);
        chart
            .draw_series(
                self.points
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !front.contains(i))
                    .map(|(_, p)| Circle::new((p.cost, p.quality), 5, grey.stroke_width(2))),
            )?
            .label("dominated")
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, grey.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                front
                    .iter()
                    .map(|&i| (self.points[i].cost, self.points[i].quality)),
                red.stroke_width(2),
            ))?
            .label("Pareto front")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], red.stroke_width(2)));
        chart.draw_series(front.iter().map(|&i| {
            Circle::new(
                (self.points[i].cost, self.points[i].quality),
                6,
                red.filled(),
            )
        }))?;
        chart.draw_series(self.points.iter().map(|p| {
            EmptyElement::at((p.cost, p.quality))
                + Text::new(p.label.clone(), (10, -6), font(12).color(&BLACK))
        }))?;
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(cost: f64, quality: f64) -> Candidate {
        Candidate {
            label: String::new(),
            cost,
            quality,
        }
    }

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        let pts = [
            c(0.5, 0.90),
            c(0.3, 0.88),
            c(0.4, 0.85),
            c(0.2, 0.80),
            c(0.5, 0.91),
        ];
        // (0.4, 0.85) loses to (0.3, 0.88); (0.5, 0.90) to (0.5, 0.91).
        assert_eq!(pareto_front(&pts), vec![3, 1, 4]);
    }

    #[test]
    fn charts_render_to_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let bars = Bars {
            title: "weight bits".into(),
            value_label: "bits".into(),
            categories: vec!["stem".into(), "blocks.0.depthwise".into()],
            values: vec![4.0, 6.5],
            color: color(0),
            reference: Some(("mean 5.25".into(), 5.25)),
        };
        let [png, svg] = save(&bars, &dir.path().join("bars")).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("blocks.0.depthwise"));
        // No temp files are left beside the outputs.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
