package file

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// crcAttr is the extended attribute that records a published file's CRC32C,
// as eight lowercase hex digits.
const crcAttr = "user.headercap.crc32c"

// setCRCAttr records crc on f. A file system without user extended
// attributes is not an error: the checksum is then computed when needed.
func setCRCAttr(f *os.File, crc uint32) error {
	err := syscall.Setxattr(f.Name(), crcAttr, fmt.Appendf(nil, "%08x", crc), 0)
	if errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP) {
		return nil
	}
	return err
}

// getCRCAttr returns the recorded checksum of the file at p, if any.
func getCRCAttr(p string) (uint32, bool) {
	var buf [16]byte
	n, err := syscall.Getxattr(p, crcAttr, buf[:])
	if err != nil || n != 8 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(buf[:n]), 16, 32)
	if err != nil {
		return 0, false
	}
	return uint32(v), true
}
