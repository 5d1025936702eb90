// Package archivee2e holds the end-to-end tests of the archiver: the real
// packet-headers and pcap-archiver binaries, built with go build, archiving
// to real storage servers (the file backend, fake-gcs-server, versitygw).
//
// The tests (Linux) run real traffic through network namespaces with the
// real tcp-info and a tcpdump ground truth, as the capture end-to-end test in
// ../ does, and check the bucket instead of the data dir: every flow is in
// exactly one object, exactly once, and matches the ground truth. Fault tests
// kill the archiver with SIGKILL at random points, stop the storage server
// mid-run, and start the archiver on a damaged spool dir. See README.md.
//
// The package has no code outside its tests. It sends traffic only inside
// the namespaces it creates, to documentation addresses; storage servers
// listen on 127.0.0.1 only.
package archivee2e
