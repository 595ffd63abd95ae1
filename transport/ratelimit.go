package transport

import (
	"context"
	"fmt"
	"github.com/imgctl/imgctl/internal/pace"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/time/rate"
)

// ParseRate parses a byte rate such as "10MB/s", "512KiB", "1.5M" or "0"
// (unlimited). Units: B, kB/KB (1000), KiB (1024), MB, MiB, GB, GiB;
// a bare K/M/G means KiB/MiB/GiB. "/s" is optional. It returns bytes per
// second; 0 means no limit.
func ParseRate(s string) (int64, error) {
	return parseBytes(strings.TrimSuffix(strings.TrimSpace(s), "/s"), "rate", s)
}

// ParseSize parses a byte count with ParseRate's units ("32MiB", "1.5G",
// "0").
func ParseSize(s string) (int64, error) { return parseBytes(strings.TrimSpace(s), "size", s) }

// parseBytes parses t, a number and a unit; what and s name it in errors.
func parseBytes(t, what, s string) (int64, error) {
	if t == "" || t == "0" {
		return 0, nil
	}
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s %q: not a number", what, s)
	}
	mult := map[string]float64{"": 1, "B": 1, "k": 1e3, "kB": 1e3, "KB": 1e3, "KiB": 1 << 10, "K": 1 << 10,
		"MB": 1e6, "MiB": 1 << 20, "M": 1 << 20, "GB": 1e9, "GiB": 1 << 30, "G": 1 << 30}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%s %q: unknown unit %q", what, s, unit)
	}
	return int64(v * mult), nil
}

// NewLimiter returns a limiter for bytesPerSec (nil for 0: unlimited).
func NewLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := int(max(bytesPerSec/10, 64<<10))
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// limitedWriter paces writes through a shared limiter.
type limitedWriter struct {
	ctx context.Context
	w   io.Writer
	l   *rate.Limiter
}

func (lw limitedWriter) Write(p []byte) (int, error) { return pace.Write(lw.ctx, lw.w, lw.l, p) }

// limitedTransport paces response bodies through a shared limiter.
type limitedTransport struct {
	base http.RoundTripper
	l    *rate.Limiter
}

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err == nil {
		resp.Body = limitedBody{resp.Body, req.Context(), t.l}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	ctx context.Context
	l   *rate.Limiter
}

func (b limitedBody) Read(p []byte) (int, error) {
	if len(p) > b.l.Burst() {
		p = p[:b.l.Burst()]
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		if werr := b.l.WaitN(b.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}
