package sockdiag

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// helpers are alternative mains of the test binary, selected by the
// SOCKDIAG_HELPER environment variable (see cost_linux_test.go).
var helpers = map[string]func() int{}

func TestMain(m *testing.M) {
	if h := helpers[os.Getenv("SOCKDIAG_HELPER")]; h != nil {
		os.Exit(h())
	}
	goleak.VerifyTestMain(m)
}
