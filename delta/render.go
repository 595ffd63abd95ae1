package delta

import (
	"embed"
	"fmt"
	"html/template"
	"io"
	"strings"
)

//go:embed report.html.tmpl
var tmplFS embed.FS

var htmlTmpl = template.Must(template.New("report.html.tmpl").Funcs(template.FuncMap{
	"human": HumanBytes,
	"pct": func(a, b int64) string {
		if b == 0 {
			return "0.0"
		}
		return fmt.Sprintf("%.1f", 100*float64(a)/float64(b))
	},
}).ParseFS(tmplFS, "report.html.tmpl"))

// HumanBytes formats n with binary units.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// WriteText writes a human report. At most maxRegions changed regions are
// listed (0: all).
func (d *Diff) WriteText(w io.Writer, maxRegions int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "diff %s/%s@%d → %s/%s@%d\n", d.Old.Name, d.Old.Channel, d.Old.Revision, d.New.Name, d.New.Channel, d.New.Revision)
	fmt.Fprintf(&b, "  size          %s → %s\n", HumanBytes(d.Old.Size), HumanBytes(d.New.Size))
	fmt.Fprintf(&b, "  chunks        %d → %d\n", d.Old.Chunks, d.New.Chunks)
	fmt.Fprintf(&b, "  new           %6d chunks  %s\n", d.NewChunks, HumanBytes(d.NewBytes))
	fmt.Fprintf(&b, "  shared        %6d chunks  %s\n", d.SharedChunks, HumanBytes(d.SharedBytes))
	fmt.Fprintf(&b, "  removed       %6d chunks  %s\n", d.RemovedChunks, HumanBytes(d.RemovedBytes))
	exact := "stored, compressed"
	if !d.FetchExact {
		exact = "upper bound: plain size of chunks the store does not hold"
	}
	fmt.Fprintf(&b, "  to fetch      %s (%s) for a terminal on revision %d with it as seed\n", HumanBytes(d.FetchBytes), exact, d.Old.Revision)
	if d.New.Size > 0 {
		fmt.Fprintf(&b, "                %.2f %% of the content\n", 100*float64(d.FetchBytes)/float64(d.New.Size))
	}
	if d.PackBytes > 0 {
		fmt.Fprintf(&b, "  delta pack    %s for a terminal on revision %d (chunks %s, full release %s)\n",
			HumanBytes(d.PackBytes), d.Old.Revision, HumanBytes(d.FetchBytes), HumanBytes(d.FullBytes))
	}
	if f := d.Files; f != nil {
		fmt.Fprintf(&b, "  files         %d added (%s), %d removed (%s), %d changed (%s), %d metadata only, %d unchanged\n",
			f.Added, HumanBytes(f.AddedBytes), f.Removed, HumanBytes(f.RemovedBytes), f.Changed, HumanBytes(f.ChangedBytes), f.Metadata, f.Unchanged)
		for i, c := range f.Files {
			if maxRegions > 0 && i == maxRegions {
				fmt.Fprintf(&b, "    … %d more (use --format json for all)\n", len(f.Files)-i)
				break
			}
			size := HumanBytes(c.NewSize)
			if c.Change == "removed" {
				size = HumanBytes(c.OldSize)
			}
			line := fmt.Sprintf("    %-8s %-10s %-9s", c.Change, size, c.Type)
			if c.NewBytes > 0 {
				line += fmt.Sprintf(" %10s new", HumanBytes(c.NewBytes))
			} else {
				line += fmt.Sprintf(" %14s", "")
			}
			line += "  " + c.Path
			if c.Detail != "" {
				line += " (" + c.Detail + ")"
			}
			fmt.Fprintln(&b, line)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	ch := d.Changed()
	fmt.Fprintf(&b, "  changed       %s in %d regions\n", HumanBytes(d.ChangedBytes), len(ch))
	for i, r := range ch {
		if maxRegions > 0 && i == maxRegions {
			fmt.Fprintf(&b, "    … %d more (use --format json for all)\n", len(ch)-i)
			break
		}
		fmt.Fprintf(&b, "    %#012x +%-10s %s\n", r.Offset, HumanBytes(r.Size), r.Kind)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

type svgRect struct {
	X, W  float64
	Color string
	Title string
}

// WriteHTML writes a single self-contained HTML page with an inline SVG
// map of the new image (no scripts, no external resources).
func (d *Diff) WriteHTML(w io.Writer) error {
	const width = 1000.0
	colors := map[RegionKind]string{RegionSame: "#9ecae1", RegionMoved: "#fdae6b", RegionNew: "#e6550d", RegionZero: "#eeeeee"}
	var rects []svgRect
	if d.New.Size > 0 {
		scale := width / float64(d.New.Size)
		for _, r := range d.Regions {
			x := float64(r.Offset) * scale
			wd := float64(r.Size) * scale
			if r.Kind == RegionNew || r.Kind == RegionMoved {
				wd = max(wd, 0.5) // keep small changes visible
			}
			rects = append(rects, svgRect{X: x, W: wd, Color: colors[r.Kind],
				Title: fmt.Sprintf("%s: offset %d, %s", r.Kind, r.Offset, HumanBytes(r.Size))})
		}
	}
	return htmlTmpl.Execute(w, map[string]any{"D": d, "Rects": rects, "Width": width, "Colors": colors, "Changed": d.Changed()})
}
