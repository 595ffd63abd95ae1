package partition

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// State is a slot's boot state as the bootloader sees it.
type State string

// States.
const (
	Good State = "good" // bootable: confirmed, or primary with tries left
	Bad  State = "bad"  // not bootable: failed, exhausted or never activated
)

// Bootloader is the boot-slot switch. Every method that changes the boot
// environment does it in ONE write of all variables it touches, because
// several separate writes can leave a device unbootable if power fails in
// between. Slots are named by their boot names ("A", "B").
type Bootloader interface {
	// Primary returns the slot the bootloader will try first, or "" if no
	// slot is bootable.
	Primary(ctx context.Context) (string, error)
	// SetPrimary makes slot the first to try, with a fresh set of tries.
	SetPrimary(ctx context.Context, slot string) error
	// State reports whether slot is bootable.
	State(ctx context.Context, slot string) (State, error)
	// SetState marks slot good (confirmed: stops its boot counting) or bad
	// (never booted again until activated).
	SetState(ctx context.Context, slot string, s State) error
	// TriesLeft returns how many more boots of slot the bootloader will
	// attempt before it falls back (for status).
	TriesLeft(ctx context.Context, slot string) (int, error)
}

// Errors.
var (
	ErrNoEnv       = errors.New("boot environment not found")
	ErrUnknownSlot = errors.New("unknown slot")
)

var slotName = regexp.MustCompile(`^[A-Za-z0-9_]{1,16}$`)

func checkSlot(slots []string, slot string) error {
	for _, s := range slots {
		if s == slot {
			return nil
		}
	}
	return fmt.Errorf("%w %q (slots: %s)", ErrUnknownSlot, slot, strings.Join(slots, ", "))
}

// reorder returns slot followed by the others in their current order, then
// any slot missing from order.
func reorder(order []string, slots []string, first string) []string {
	out := []string{first}
	seen := map[string]bool{first: true}
	for _, s := range append(append([]string{}, order...), slots...) {
		if !seen[s] && checkSlot(slots, s) == nil {
			out = append(out, s)
			seen[s] = true
		}
	}
	return out
}

// run executes a tool and returns its standard output; the error names
// the command and carries its standard error.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runEnv(ctx, nil, name, args...)
}

// runEnv is run with extra environment variables.
func runEnv(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	var so, se strings.Builder
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(se.String()))
	}
	return so.String(), nil
}

// parseEnv parses NAME=VALUE lines.
func parseEnv(out string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			env[k] = v
		}
	}
	return env
}
