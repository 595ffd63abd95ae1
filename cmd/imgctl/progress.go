package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/imgctl/imgctl/delta"
)

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// progress implements delta.Progress for the terminal: a bar on a TTY,
// plain lines every 10 % otherwise, nothing with --quiet.
type progress struct {
	mu    sync.Mutex
	g     *globalOptions
	what  string
	bar   *progressbar.ProgressBar
	total int64
	done  int64
	step  int64
	count bool // units are items, not bytes
}

func newProgress(g *globalOptions, what string) *progress { return &progress{g: g, what: what} }

func newCountProgress(g *globalOptions, what string) *progress {
	return &progress{g: g, what: what, count: true}
}

func (p *progress) Start(total int64) {
	if p.g.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total, p.done, p.step = total, 0, 0
	if p.g.isTTY {
		p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(p.g.stderr),
			progressbar.OptionSetDescription(p.what), progressbar.OptionShowBytes(!p.count), progressbar.OptionShowCount(),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish(),
			progressbar.OptionSetWidth(30))
	}
}

func (p *progress) Add(n int64) {
	if p.g.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.bar != nil {
		p.bar.Add64(n)
		return
	}
	if p.total > 0 {
		if s := p.done * 10 / p.total; s > p.step {
			p.step = s
			if p.count {
				fmt.Fprintf(p.g.stderr, "%s: %d%% (%d of %d)\n", p.what, s*10, p.done, p.total)
			} else {
				fmt.Fprintf(p.g.stderr, "%s: %d%% (%s of %s)\n", p.what, s*10, human(p.done), human(p.total))
			}
		}
	}
}

func (p *progress) Done() {
	if p.g.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
}

// human formats a byte count with binary units, as the diff report does.
func human(n int64) string { return delta.HumanBytes(n) }

// logf prints an informational line unless --quiet.
func (g *globalOptions) logf(f string, a ...any) {
	if !g.quiet {
		fmt.Fprintf(g.stderr, f+"\n", a...)
	}
}
