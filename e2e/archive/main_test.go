package archivee2e

import (
	"os"
	"testing"

	"github.com/headercap/headercap/internal/e2etest"
)

func TestMain(m *testing.M) { os.Exit(e2etest.Main(m, "headercap-archive-e2e-bin-")) }
