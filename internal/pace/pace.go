// Package pace paces writes through a rate limiter shared by every writer
// of a role (HTTP responses and BitTorrent connections alike), so that one
// cap bounds the role's whole egress.
package pace

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// Write writes p to w in pieces of at most the limiter's burst, waiting
// for tokens before each; a nil limiter writes at once.
func Write(ctx context.Context, w io.Writer, l *rate.Limiter, p []byte) (int, error) {
	if l == nil {
		return w.Write(p)
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, l.Burst())
		if err := l.WaitN(ctx, n); err != nil {
			return done, err
		}
		k, err := w.Write(p[done : done+n])
		done += k
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
