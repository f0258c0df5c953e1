package results

// The chart is drawn with golang.org/x/image alone: the Go fonts, its OpenType rasterizer, and the
// standard library's image/draw and image/png. The chart is worth keeping; a plotting library
// that brings a PDF writer, a LaTeX typesetter and their fonts for one PNG is not. Measured when
// the load test became a module of its own (GOWORK=off go list -m all | wc -l in hack/loadtest,
// where the service's modules and vegeta's are most of the count):
//
//   - gonum.org/v1/plot v0.17.0, as before: 239 modules. It brings go-pdf/fpdf, go-latex/latex,
//     go-fonts/liberation, ajstarks/svgo, sbinet/gg and golang/freetype, and the legend, the
//     titles, the log ticks and the bars of a log axis were drawn by this file's code anyway.
//   - github.com/wcharczuk/go-chart/v2 v2.1.2: 223 modules. It draws on golang/freetype, which
//     has not changed since 2017, and its last release is of August 2024. Its BarChart is one
//     row of bars (no groups of bars, no panels sharing an axis), and left to its defaults it
//     starts the axis at the smallest bar, hiding the slowest target. The layout would have
//     been drawn by hand on its renderer all the same.
//   - golang.org/x/image alone, the Go team's, released every month: 218 modules, the chart's
//     layout in this file either way. v0.46.0 requires the very x/sys and x/text the service
//     does, so the ceiling is still built with the service's versions.
//
// The chart shows what gonum's did: one panel per table size, one group of bars per number of
// connections, one bar per target labelled with its value, all panels on one axis.

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"strconv"
	"sync"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gobold"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"
)

// Chart geometry, in points (1/72 inch) drawn at chartDPI: wide enough for three panels of
// twelve labelled bars, at a resolution that stays sharp when the README scales it down.
const (
	chartWidth  = 13 * 72  // points
	chartHeight = 5.2 * 72 // points
	chartDPI    = 110
	// Above this spread between the fastest and slowest bar a linear axis flattens the slow
	// ones (Postgres at 10,000 rows) into nothing.
	logSpread = 20
)

var (
	ink       = color.Gray{Y: 0x20}
	subInk    = color.Gray{Y: 0x50}
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

// pt is a length in points as pixels.
func pt(points float64) float64 { return points * chartDPI / 72 }

// WritePNG draws successful requests per second as grouped bars: one panel per table size, one
// group per number of connections, one bar per target, each labelled with its value. All panels
// share one axis so that heights compare across table sizes. The subtitle, in smaller type, says
// how the numbers were obtained.
func WritePNG(w io.Writer, title, subtitle string, all []Measurement) error {
	if len(all) == 0 {
		return fmt.Errorf("drawing the chart: no measurements")
	}
	f, err := loadFonts()
	if err != nil {
		return err
	}
	rows := distinct(all, func(m Measurement) int { return m.Rows })
	conns := distinct(all, func(m Measurement) int { return m.Conns })
	order := targets(all)
	colors := targetColors(order)
	lo, hi := throughputRange(all)
	ax := newYAxis(lo, hi)

	c := newCanvas(int(math.Round(pt(chartWidth))), int(math.Round(pt(chartHeight))))
	width, height := float64(c.img.Bounds().Dx()), float64(c.img.Bounds().Dy())
	pad := pt(10)

	// Title, subtitle and legend, centred.
	titleFace := f.face(f.bold, 15)
	c.text(titleFace, ink, width/2, pad, title, alignCenter, alignTop)
	y := pad + lineHeight(titleFace)
	if subtitle != "" {
		subFace := f.face(f.regular, 10.5)
		y += pt(3)
		c.text(subFace, subInk, width/2, y, subtitle, alignCenter, alignTop)
		y += lineHeight(subFace)
	}
	legendY := y + pt(12)
	legendY = drawLegend(c, f, order, colors, width/2, legendY, width-2*pad)

	// The panels, side by side below the legend, their data areas of one size.
	yLabel := "successful requests/s"
	if ax.log {
		yLabel += " (log scale)"
	}
	yLabelFace := f.face(f.regular, 11)
	tickFace := f.face(f.regular, 10)
	panelTitleFace := f.face(f.bold, 12)
	xLabelFace := f.face(f.regular, 11)
	barLabelFace := f.face(f.regular, 8.5)

	ticks := ax.ticks()
	tickLabelWidth := 0.0
	for _, t := range ticks {
		tickLabelWidth = max(tickLabelWidth, textWidth(tickFace, t.label))
	}
	const majorTick, axisPadding, labelGap = 8, 5, 3 // points
	areaLeft := pad + lineHeight(yLabelFace) + pt(4)
	areaTop := legendY + pt(16)
	areaRight, areaBottom := width-pad, height-pad
	gapX := pt(18)
	panelWidth := (areaRight - areaLeft - gapX*float64(len(rows)-1)) / float64(len(rows))
	// Inside a panel: its title above, the y ticks and their labels left, the x tick labels and
	// the axis label below.
	insetLeft := tickLabelWidth + pt(labelGap+majorTick+axisPadding)
	insetTop := lineHeight(panelTitleFace) + pt(8) + lineHeight(barLabelFace)/2
	insetBottom := pt(axisPadding+labelGap) + lineHeight(tickFace) + pt(2) + lineHeight(xLabelFace)
	insetRight := pt(4)

	for i, n := range rows {
		left := areaLeft + float64(i)*(panelWidth+gapX)
		data := box{
			x0: left + insetLeft, y0: areaTop + insetTop,
			x1: left + panelWidth - insetRight, y1: areaBottom - insetBottom,
		}
		drawPanel(c, data, ax, ticks, all, n, conns, order, colors, tickFace, xLabelFace, barLabelFace)
		c.text(panelTitleFace, ink, (data.x0+data.x1)/2, data.y0-pt(8)-lineHeight(barLabelFace)/2, thousands(n)+" rows", alignCenter, alignBottom)
		if i == 0 {
			c.textUp(yLabelFace, ink, pad, (data.y0+data.y1)/2, yLabel)
		}
	}
	if err := png.Encode(w, c.img); err != nil {
		return fmt.Errorf("encoding the chart as PNG: %w", err)
	}
	return nil
}

// box is a rectangle in pixels, y growing downwards.
type box struct{ x0, y0, x1, y1 float64 }

// drawPanel draws one table size into data: groups at x = 0, 1, 2… for the connection counts.
func drawPanel(c *canvas, data box, ax yAxis, ticks []tick, all []Measurement, rows int, conns []int, order []Measurement,
	colors map[string]color.Color, tickFace, xLabelFace, barLabelFace font.Face) {
	const majorTick, minorTick, axisPadding, labelGap = 8, 4, 5, 3 // points
	toY := func(v float64) float64 { return data.y1 - ax.fraction(v)*(data.y1-data.y0) }
	toX := func(x float64) float64 { return data.x0 + (x+0.5)/float64(len(conns))*(data.x1-data.x0) }

	// Grid first, so the bars cover it.
	for _, t := range ticks {
		if t.label != "" {
			c.hline(data.x0, data.x1, toY(t.value), gridColor)
		}
	}

	// The y axis, set off from the data by axisPadding as gonum set it, with its ticks.
	axisX := data.x0 - pt(axisPadding)
	c.vline(axisX, data.y0, data.y1, ink)
	for _, t := range ticks {
		y := toY(t.value)
		length := pt(minorTick)
		if t.label != "" {
			length = pt(majorTick)
			c.text(tickFace, ink, axisX-length-pt(labelGap), y, t.label, alignRight, alignMiddle)
		}
		c.hline(axisX-length, axisX, y, ink)
	}

	// The x axis: no ticks, the connection counts under the groups.
	axisY := data.y1 + pt(axisPadding)
	c.hline(data.x0, data.x1, axisY, ink)
	for i, n := range conns {
		c.text(tickFace, ink, toX(float64(i)), axisY+pt(labelGap), strconv.Itoa(n), alignCenter, alignTop)
	}
	c.text(xLabelFace, ink, (data.x0+data.x1)/2, axisY+pt(labelGap)+lineHeight(tickFace)+pt(2),
		"concurrent keep-alive connections", alignCenter, alignTop)

	// The bars, drawn from the bottom of the axis rather than from zero, which a log axis
	// cannot show.
	width := 0.84 / float64(len(order))
	for j, t := range order {
		for i, n := range conns {
			for _, m := range all {
				if m.Rows != rows || m.Conns != n || m.Target != t.Target {
					continue
				}
				x := float64(i) - 0.42 + width*(float64(j)+0.5)
				top := data.y1
				if m.Throughput > ax.min {
					top = toY(m.Throughput)
				}
				x0, x1 := toX(x-width/2)+pt(0.5), toX(x+width/2)-pt(0.5)
				c.fill(x0, top, x1, data.y1, colors[t.Target])
				c.text(barLabelFace, ink, (x0+x1)/2, top-pt(1.5), compact(m.Throughput), alignCenter, alignBottom)
			}
		}
	}
}

// drawLegend lays the targets out in lines centred on cx, as many as fit in maxWidth each
// (a vertical legend inside a panel would not leave room), and returns the last line's y.
func drawLegend(c *canvas, f *fonts, order []Measurement, colors map[string]color.Color, cx, y, maxWidth float64) float64 {
	face := f.face(f.regular, 11)
	box, gap, space := pt(10), pt(5), pt(22)
	entry := func(m Measurement) float64 { return box + gap + textWidth(face, m.Target) }
	var lines [][]Measurement
	var width float64
	for _, m := range order {
		if n := len(lines); n > 0 && width+space+entry(m) <= maxWidth {
			lines[n-1] = append(lines[n-1], m)
			width += space + entry(m)
			continue
		}
		lines = append(lines, []Measurement{m})
		width = entry(m)
	}
	for i, line := range lines {
		if i > 0 {
			y += lineHeight(face) + pt(4)
		}
		width := 0.0
		for j, m := range line {
			if j > 0 {
				width += space
			}
			width += entry(m)
		}
		x := cx - width/2
		for _, m := range line {
			c.fill(x, y-box/2, x+box, y+box/2, colors[m.Target])
			x += box + gap
			c.text(face, ink, x, y, m.Target, alignLeft, alignMiddle)
			x += textWidth(face, m.Target) + space
		}
	}
	return y
}

func targetColors(order []Measurement) map[string]color.Color {
	out := map[string]color.Color{}
	cached, ceilings, directs := 0, 0, 0
	for _, m := range order {
		switch m.Kind {
		case Ceiling, RedisCeiling:
			// Another ceiling (another client's, or the ceiling+redis) in a lighter shade of the
			// same colour.
			out[m.Target] = lighter(ceilingColor, ceilings)
			ceilings++
		case Direct:
			out[m.Target] = lighter(directColor, directs)
			directs++
		default:
			out[m.Target] = cachedColors[cached%len(cachedColors)]
			cached++
		}
	}
	return out
}

// lighter is col, mixed with white more for each n.
func lighter(col color.RGBA, n int) color.Color {
	mix := func(v uint8) uint8 { return uint8(255 - (255-int(v))*2/(2+n*2)) }
	return color.RGBA{R: mix(col.R), G: mix(col.G), B: mix(col.B), A: 0xff}
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

// yAxis is the requests/s axis all panels share.
type yAxis struct {
	min, max float64
	log      bool
}

func newYAxis(lo, hi float64) yAxis {
	if lo > 0 && hi/lo > logSpread {
		// Whole decades at the bottom; room above the tallest bar for its label, up to a
		// labelled tick.
		return yAxis{min: math.Pow(10, math.Floor(math.Log10(lo))), max: niceAbove(hi * 1.4), log: true}
	}
	return yAxis{min: 0, max: hi * 1.15}
}

// fraction is where v lies on the axis: 0 at the bottom, 1 at the top.
func (a yAxis) fraction(v float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.min)) / (math.Log10(a.max) - math.Log10(a.min))
	}
	return (v - a.min) / (a.max - a.min)
}

// tick is a mark on the y axis; a labelled one also has a grid line.
type tick struct {
	value float64
	label string
}

func (a yAxis) ticks() []tick {
	if a.log {
		return logTicks(a.min, a.max)
	}
	return linearTicks(a.min, a.max)
}

// logTicks labels 1, 2 and 5 of every decade (powers of ten alone are too sparse over two or
// three decades) and marks the other digits.
func logTicks(lo, hi float64) []tick {
	var ts []tick
	for d := math.Floor(math.Log10(lo)); d <= math.Ceil(math.Log10(hi)); d++ {
		for k := 1; k < 10; k++ {
			v := float64(k) * math.Pow(10, d)
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			t := tick{value: v}
			if k == 1 || k == 2 || k == 5 {
				t.label = tickLabel(v)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// linearTicks labels round values (steps of 1, 2 or 5 times a power of ten, the largest that
// gives at least four steps) and marks the halves between them.
func linearTicks(lo, hi float64) []tick {
	span := hi - lo
	if !(span > 0) || math.IsInf(span, 0) {
		return nil
	}
	d := math.Pow(10, math.Floor(math.Log10(span)))
	var step float64
	for _, k := range []float64{5, 2, 1, 0.5, 0.2, 0.1} {
		if step = k * d; span/step >= 4 {
			break
		}
	}
	var ts []tick
	for i := math.Ceil(lo / (step / 2)); i*step/2 <= hi; i++ {
		v := math.Round(i*step/2*1e9) / 1e9 // 0.6, not 0.6000000000000001
		t := tick{value: v}
		if math.Mod(i, 2) == 0 {
			t.label = tickLabel(v)
		}
		ts = append(ts, t)
	}
	return ts
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

// niceAbove is the first of 1, 2, 5, 10, 20, 50… at or above v.
func niceAbove(v float64) float64 {
	d := math.Pow(10, math.Floor(math.Log10(v)))
	for _, k := range []float64{1, 2, 5, 10} {
		if k*d >= v*(1-1e-9) {
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

// fonts are the Go fonts, parsed once.
type fonts struct {
	regular, bold *opentype.Font
}

var (
	parsedFonts    *fonts
	parsedFontsErr error
	parseFonts     sync.Once
)

func loadFonts() (*fonts, error) {
	parseFonts.Do(func() {
		var f fonts
		if f.regular, parsedFontsErr = opentype.Parse(goregular.TTF); parsedFontsErr != nil {
			return
		}
		if f.bold, parsedFontsErr = opentype.Parse(gobold.TTF); parsedFontsErr != nil {
			return
		}
		parsedFonts = &f
	})
	if parsedFontsErr != nil {
		return nil, fmt.Errorf("loading the chart's fonts: %w", parsedFontsErr)
	}
	return parsedFonts, nil
}

// face is f at size points, drawn at the chart's resolution.
func (*fonts) face(f *opentype.Font, size float64) font.Face {
	// NewFace only scales: it has no error to return for a parsed font.
	face, _ := opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: chartDPI, Hinting: font.HintingNone})
	return face
}

func lineHeight(face font.Face) float64 {
	m := face.Metrics()
	return float64(m.Ascent+m.Descent) / 64
}

func textWidth(face font.Face, s string) float64 {
	return float64(font.MeasureString(face, s)) / 64
}

// canvas is the chart's image and its drawing operations, in pixels, y growing downwards.
type canvas struct{ img *image.RGBA }

func newCanvas(w, h int) *canvas {
	c := &canvas{img: image.NewRGBA(image.Rect(0, 0, w, h))}
	draw.Draw(c.img, c.img.Bounds(), image.White, image.Point{}, draw.Src)
	return c
}

// fill paints the rectangle between two corners, edges on whole pixels so bars stay crisp.
func (c *canvas) fill(x0, y0, x1, y1 float64, col color.Color) {
	r := image.Rect(int(math.Round(x0)), int(math.Round(y0)), int(math.Round(x1)), int(math.Round(y1)))
	draw.Draw(c.img, r, image.NewUniform(col), image.Point{}, draw.Over)
}

// hline and vline draw one-pixel lines.
func (c *canvas) hline(x0, x1, y float64, col color.Color) {
	yy := math.Floor(y)
	c.fill(x0, yy, x1, yy+1, col)
}

func (c *canvas) vline(x, y0, y1 float64, col color.Color) {
	xx := math.Floor(x)
	c.fill(xx, y0, xx+1, y1, col)
}

type alignment int

const (
	alignLeft alignment = iota
	alignCenter
	alignRight
	alignTop
	alignMiddle
	alignBottom
)

// text draws s with its box placed at (x, y) as the alignments say: the box is as wide as the
// text and as high as the face's ascent and descent.
func (c *canvas) text(face font.Face, col color.Color, x, y float64, s string, h, v alignment) {
	w := textWidth(face, s)
	switch h {
	case alignCenter:
		x -= w / 2
	case alignRight:
		x -= w
	}
	switch v {
	case alignMiddle:
		y -= lineHeight(face) / 2
	case alignBottom:
		y -= lineHeight(face)
	}
	baseline := y + float64(face.Metrics().Ascent)/64
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: face,
		Dot: fixed.Point26_6{X: fixed.Int26_6(math.Round(x * 64)), Y: fixed.Int26_6(math.Round(baseline * 64))}}
	d.DrawString(s)
}

// textUp draws s reading upwards, its left edge (after turning) at x and centred on y: the y
// axis's label.
func (c *canvas) textUp(face font.Face, col color.Color, x, y float64, s string) {
	w := int(math.Ceil(textWidth(face, s)))
	h := int(math.Ceil(lineHeight(face)))
	flat := image.NewAlpha(image.Rect(0, 0, w, h))
	d := font.Drawer{Dst: flat, Src: image.Opaque, Face: face, Dot: fixed.Point26_6{Y: face.Metrics().Ascent}}
	d.DrawString(s)
	// Turn a quarter left: the flat image's pixel (i, j) goes to (j, w-1-i).
	up := image.NewAlpha(image.Rect(0, 0, h, w))
	for j := range h {
		for i := range w {
			up.SetAlpha(j, w-1-i, flat.AlphaAt(i, j))
		}
	}
	at := image.Pt(int(math.Round(x)), int(math.Round(y-float64(w)/2)))
	draw.DrawMask(c.img, up.Bounds().Add(at), image.NewUniform(col), image.Point{}, up, image.Point{}, draw.Over)
}
