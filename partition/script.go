package partition

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Script is a bootloader switch implemented by an executable speaking
// RAUC's custom-backend verbs: get-primary, set-primary X, get-state X,
// set-state X good|bad, get-current. TriesLeft uses imgctl's extra verb
// get-tries X and reports -1 if the script lacks it. partition/imgctl-bootslot
// is such a script for GRUB and U-Boot environments.
type Script struct {
	Path  string
	Slots []string
	Env   []string // extra environment for the script (KEY=VALUE)
}

var _ Bootloader = (*Script)(nil)

func (s *Script) call(ctx context.Context, args ...string) (string, error) {
	out, err := runEnv(ctx, s.Env, s.Path, args...)
	return strings.TrimSpace(out), err
}

// Primary runs get-primary.
func (s *Script) Primary(ctx context.Context) (string, error) {
	p, err := s.call(ctx, "get-primary")
	if err != nil || p == "" {
		return "", err
	}
	return p, checkSlot(s.Slots, p)
}

// SetPrimary runs set-primary X.
func (s *Script) SetPrimary(ctx context.Context, slot string) error {
	if err := checkSlot(s.Slots, slot); err != nil {
		return err
	}
	_, err := s.call(ctx, "set-primary", slot)
	return err
}

// State runs get-state X.
func (s *Script) State(ctx context.Context, slot string) (State, error) {
	if err := checkSlot(s.Slots, slot); err != nil {
		return "", err
	}
	out, err := s.call(ctx, "get-state", slot)
	if err != nil {
		return "", err
	}
	switch State(out) {
	case Good, Bad:
		return State(out), nil
	}
	return "", fmt.Errorf("%s get-state %s: %q is neither good nor bad", s.Path, slot, out)
}

// SetState runs set-state X good|bad.
func (s *Script) SetState(ctx context.Context, slot string, st State) error {
	if err := checkSlot(s.Slots, slot); err != nil {
		return err
	}
	_, err := s.call(ctx, "set-state", slot, string(st))
	return err
}

// TriesLeft runs get-tries X; -1 if the script does not know the verb.
func (s *Script) TriesLeft(ctx context.Context, slot string) (int, error) {
	if err := checkSlot(s.Slots, slot); err != nil {
		return 0, err
	}
	out, err := s.call(ctx, "get-tries", slot)
	if err != nil {
		return -1, nil
	}
	n, err := strconv.Atoi(out)
	if err != nil {
		return -1, nil
	}
	return n, nil
}

// Current runs get-current: the booted slot.
func (s *Script) Current(ctx context.Context) (string, error) {
	return s.call(ctx, "get-current")
}
