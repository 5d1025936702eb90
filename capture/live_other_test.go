//go:build !linux

package capture

import (
	"context"
	"errors"
	"testing"
)

func TestLiveNotSupported(t *testing.T) {
	_, err := NewLive(Config{Interfaces: []string{"en0"}}, func(int) Handler { return &nopHandler{} }, nil)
	if !errors.Is(err, ErrNotSupported) {
		t.Errorf("NewLive: %v", err)
	}
	if err := (&Live{}).Run(context.Background()); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Run: %v", err)
	}
}
