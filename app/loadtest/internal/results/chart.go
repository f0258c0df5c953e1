package results

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"

	xfont "golang.org/x/image/font"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Chart geometry: wide enough for three panels of twelve labelled bars, at a resolution that
// stays sharp when the README scales it down.
const (
	chartWidth  = 13 * vg.Inch
	chartHeight = 5.2 * vg.Inch
	chartDPI    = 110
	// Above this spread between the fastest and slowest bar a linear axis flattens the slow
	// ones (Postgres at 10,000 rows) into nothing.
	logSpread = 20
)

var (
	sans      = font.Font{Typeface: "Liberation", Variant: "Sans"}
	sansBold  = font.Font{Typeface: "Liberation", Variant: "Sans", Weight: xfont.WeightBold}
	ink       = color.Gray{Y: 0x20}
	gridColor = color.Gray{Y: 0xe0}
	// Ceiling grey, /sample orange, cache tiers in blues and greens: the eye groups the tiers.
	ceilingColor = color.RGBA{R: 0x9e, G: 0x9e, B: 0x9e, A: 0xff}
	directColor  = color.RGBA{R: 0xe6, G: 0x55, B: 0x0d, A: 0xff}
	cachedColors = []color.Color{
		color.RGBA{R: 0x31, G: 0x82, B: 0xbd, A: 0xff},
		color.RGBA{R: 0x31, G: 0xa3, B: 0x54, A: 0xff},
		color.RGBA{R: 0x75, G: 0x6b, B: 0xb1, A: 0xff},
		color.RGBA{R: 0x63, G: 0x63, B: 0x63, A: 0xff},
	}
)

// WritePNG draws successful requests per second as grouped bars: one panel per table size, one
// group per number of connections, one bar per target, each labelled with its value. All panels
// share one axis so that heights compare across table sizes. The subtitle, in smaller type, says
// how the numbers were obtained.
func WritePNG(w io.Writer, title, subtitle string, all []Measurement) error {
	if len(all) == 0 {
		return fmt.Errorf("drawing the chart: no measurements")
	}
	rows := distinct(all, func(m Measurement) int { return m.Rows })
	conns := distinct(all, func(m Measurement) int { return m.Conns })
	order := targets(all)
	colors := targetColors(order)
	lo, hi := throughputRange(all)
	logScale := lo > 0 && hi/lo > logSpread

	img := vgimg.NewWith(vgimg.UseWH(chartWidth, chartHeight), vgimg.UseDPI(chartDPI))
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	pad := vg.Points(10)
	titleStyle := style(sansBold, 15, draw.XCenter, draw.YTop)
	dc.FillText(titleStyle, vg.Point{X: dc.Center().X, Y: dc.Max.Y - pad}, title)
	y := dc.Max.Y - pad - titleStyle.Height(title)
	if subtitle != "" {
		subStyle := style(sans, 10.5, draw.XCenter, draw.YTop)
		subStyle.Color = color.Gray{Y: 0x50}
		y -= vg.Points(3)
		dc.FillText(subStyle, vg.Point{X: dc.Center().X, Y: y}, subtitle)
		y -= subStyle.Height(subtitle)
	}
	legendY := y - vg.Points(12)
	drawLegend(dc, order, colors, legendY)

	header := dc.Max.Y - legendY + vg.Points(16)
	panels := make([]*plot.Plot, len(rows))
	for i, n := range rows {
		panels[i] = panel(all, n, conns, order, colors, lo, hi, logScale)
	}
	// The Y label and the panel titles are drawn here rather than by gonum: a long rotated axis
	// label and plot titles make plot.Align leave uneven gaps above the panels.
	yLabel := "successful requests/s"
	if logScale {
		yLabel += " (log scale)"
	}
	yStyle := style(sans, 11, draw.XCenter, draw.YCenter)
	yStyle.Rotation = math.Pi / 2
	panelTitle := style(sansBold, 12, draw.XCenter, draw.YBottom)
	area := draw.Crop(dc, 0, 0, 0, -header)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Points(18), PadRight: pad, PadBottom: pad,
		PadLeft: pad + yStyle.Height(yLabel) + vg.Points(4), PadTop: panelTitle.Height("0") + vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{panels}, tiles, area)
	for i, p := range panels {
		p.Draw(canvases[0][i])
		data := p.DataCanvas(canvases[0][i])
		dc.FillText(panelTitle, vg.Point{X: data.Center().X, Y: data.Max.Y + vg.Points(8)}, thousands(rows[i])+" rows")
		if i == 0 {
			dc.FillText(yStyle, vg.Point{X: pad + yStyle.Height(yLabel)/2, Y: data.Center().Y}, yLabel)
		}
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("encoding the chart as PNG: %w", err)
	}
	return nil
}

func style(f font.Font, size float64, x text.XAlignment, y text.YAlignment) text.Style {
	f.Size = vg.Points(size)
	return text.Style{Color: ink, Font: f, XAlign: x, YAlign: y, Handler: plot.DefaultTextHandler}
}

func targetColors(order []Measurement) map[string]color.Color {
	out := map[string]color.Color{}
	cached := 0
	for _, m := range order {
		switch m.Kind {
		case Ceiling:
			out[m.Target] = ceilingColor
		case Direct:
			out[m.Target] = directColor
		default:
			out[m.Target] = cachedColors[cached%len(cachedColors)]
			cached++
		}
	}
	return out
}

func throughputRange(all []Measurement) (lo, hi float64) {
	lo = math.Inf(1)
	for _, m := range all {
		if m.Throughput > 0 {
			lo = min(lo, m.Throughput)
			hi = max(hi, m.Throughput)
		}
	}
	if hi == 0 {
		return 0, 1
	}
	return lo, hi
}

// drawLegend lays the targets out in one centred line, which a four-entry vertical legend
// inside a panel would not leave room for.
func drawLegend(c draw.Canvas, order []Measurement, colors map[string]color.Color, y vg.Length) {
	st := style(sans, 11, draw.XLeft, draw.YCenter)
	box, gap, space := vg.Points(10), vg.Points(5), vg.Points(22)
	var width vg.Length
	for i, m := range order {
		if i > 0 {
			width += space
		}
		width += box + gap + st.Width(m.Target)
	}
	x := c.Center().X - width/2
	for _, m := range order {
		c.FillPolygon(colors[m.Target], rect(x, y-box/2, x+box, y+box/2))
		x += box + gap
		c.FillText(st, vg.Point{X: x, Y: y}, m.Target)
		x += st.Width(m.Target) + space
	}
}

func rect(x0, y0, x1, y1 vg.Length) []vg.Point {
	return []vg.Point{{X: x0, Y: y0}, {X: x0, Y: y1}, {X: x1, Y: y1}, {X: x1, Y: y0}}
}

// panel is one table size: groups at x = 0, 1, 2… for the connection counts.
func panel(all []Measurement, rows int, conns []int, order []Measurement, colors map[string]color.Color, lo, hi float64, logScale bool) *plot.Plot {
	p := plot.New()
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle = style(sans, 11, draw.XCenter, draw.YBottom)
		a.Tick.Label = style(sans, 10, draw.XCenter, draw.YTop)
		a.Color, a.Tick.Color = ink, ink
	}
	p.Y.Tick.Label.XAlign, p.Y.Tick.Label.YAlign = draw.XRight, draw.YCenter
	p.X.Label.Text = "concurrent keep-alive connections"

	var ticks plot.ConstantTicks
	for i, c := range conns {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: strconv.Itoa(c)})
	}
	p.X.Tick.Marker = ticks
	p.X.Tick.Length = 0
	p.X.Min, p.X.Max = -0.5, float64(len(conns))-0.5

	if logScale {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
		// Whole decades at the bottom; room above the tallest bar for its label, up to a
		// labelled tick.
		p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
		p.Y.Max = niceAbove(hi * 1.4)
	} else {
		p.Y.Tick.Marker = linearTicks{}
		p.Y.Min, p.Y.Max = 0, hi*1.15
	}

	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	grid.Horizontal.Color = gridColor
	p.Add(grid)

	width := 0.84 / float64(len(order))
	for j, t := range order {
		b := &bars{color: colors[t.Target], width: width, label: style(sans, 8.5, draw.XCenter, draw.YBottom)}
		for i, c := range conns {
			for _, m := range all {
				if m.Rows == rows && m.Conns == c && m.Target == t.Target {
					b.xs = append(b.xs, float64(i)-0.42+width*(float64(j)+0.5))
					b.ys = append(b.ys, m.Throughput)
				}
			}
		}
		p.Add(b)
	}
	return p
}

// bars draws from the bottom of the axis rather than from zero, which a log axis cannot show;
// gonum's BarChart always starts at zero.
type bars struct {
	xs, ys []float64
	width  float64
	color  color.Color
	label  text.Style
}

func (b *bars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	base := trY(p.Y.Min)
	for i, x := range b.xs {
		top := base
		if b.ys[i] > p.Y.Min {
			top = trY(b.ys[i])
		}
		x0, x1 := trX(x-b.width/2), trX(x+b.width/2)
		c.FillPolygon(b.color, rect(x0+vg.Points(0.5), base, x1-vg.Points(0.5), top))
		c.FillText(b.label, vg.Point{X: (x0 + x1) / 2, Y: top + vg.Points(1.5)}, compact(b.ys[i]))
	}
}

// compact is a bar's label: at most four characters, so it fits over a narrow bar.
func compact(v float64) string {
	switch {
	case v >= 9_995:
		return strconv.FormatFloat(v/1000, 'f', 0, 64) + "k"
	case v >= 999.5:
		return strconv.FormatFloat(v/1000, 'f', 1, 64) + "k"
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
}

// logTicks labels 1, 2 and 5 of every decade (plot.LogTicks labels only powers of ten, too
// sparse over two or three decades).
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for d := math.Floor(math.Log10(lo)); d <= math.Ceil(math.Log10(hi)); d++ {
		for k := 1; k < 10; k++ {
			v := float64(k) * math.Pow(10, d)
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if k == 1 || k == 2 || k == 5 {
				t.Label = tickLabel(v)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// linearTicks are gonum's default ticks with the same labels as the log axis.
type linearTicks struct{}

func (linearTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = tickLabel(ts[i].Value)
		}
	}
	return ts
}

// niceAbove is the first of 1, 2, 5, 10, 20, 50… at or above v.
func niceAbove(v float64) float64 {
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, k := range []float64{1, 2, 5, 10} {
		if k*d >= v {
			return k * d
		}
	}
	return 10 * d
}

func tickLabel(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
