// Package archive turns finished per-flow pcap files into compressed
// tarballs, uploads them through an [Uploader], and deletes the local files
// once the upload is confirmed. It re-implements m-lab/pusher for the
// packet-headers data dir.
//
// # What it owns
//
// The archiver owns, from the moment they appear, every file named exactly
//
//	<DataDir>/YYYY/MM/DD/<UUID>.pcap.gz
//
// (UUID: [A-Za-z0-9._-], not starting with '.'; the date folders must form a
// valid date). The capture side publishes such a file by an atomic rename or
// link once it is complete, and never touches it again. Everything else in the
// data dir is ignored: names starting with '.' (the capture side's temporary
// files and dot-dirs such as the spool), other suffixes, files at the wrong
// depth. Ignored names are counted and logged once each. The archiver never
// removes directories and never writes into the date folders.
//
// It also owns SpoolDir (default <DataDir>/.archive), which holds:
//
//	.lock                     held (flock) by the running archiver
//	<id>.tgz | <id>.tar.zst   a bundle's tarball (being written, or sealed)
//	<id>.json                 the manifest of a sealed bundle
//	.<id>.json.tmp            a manifest being written (deleted on start)
//	quarantine/YYYY/MM/DD/…   torn or oversized source files, set aside
//	quarantine/<id>.*         sealed bundles that could not be recovered
//
// # Handoff contract (who deletes what, when)
//
//   - A source file is read, its gzip stream verified (CRC and length), and
//     streamed into the open bundle of its date folder. It stays in the data
//     dir until its bundle's upload is confirmed. A torn or oversized (>200
//     MiB) source is moved to the quarantine, never deleted, never shipped.
//   - A bundle is sealed when its compressed size reaches MaxSize, when it
//     has been open for MaxAge, or on shutdown: the tarball is closed
//     (tar, compressor, file: every Close checked) and fsynced, then its
//     manifest is written atomically (temp file, fsync, rename, dir fsync).
//     The manifest fixes the object name. A tarball without a manifest is
//     garbage and is deleted on the next start; its sources are still in the
//     data dir and are bundled again.
//   - After a confirmed upload (Put returned nil: created, or already there
//     with the same CRC32C) the archiver deletes, in this order: the member
//     source files (then fsyncs their directories), the tarball, and the
//     manifest LAST. A crash anywhere in between leaves the manifest, and the
//     next start uploads the bundle again under the same name (the store
//     answers "already exists with the same checksum") and finishes the
//     deletion. Sources already gone are fine.
//   - If the name is taken by different bytes (upload.ErrConflict; many
//     hosts may share a node name such as third-party), the bundle is
//     re-sealed under a new timestamp: the manifest is rewritten atomically
//     with the new name, then the upload is retried. Nothing is overwritten.
//   - On start, every manifest in SpoolDir is an unconfirmed sealed bundle.
//     Its tarball is verified (size and CRC32C); a missing or torn tarball is
//     rebuilt from the sources listed in the manifest when they all still
//     exist, or else the manifest and tarball go to the quarantine (counted,
//     logged at error level) and the remaining sources are bundled again.
//     Files listed in a pending manifest are never bundled a second time.
//   - ENOSPC (or any write error) while writing a bundle aborts that bundle:
//     its partial tarball is removed, its sources stay where they are and are
//     bundled again later, after a back-off.
//
// # Concurrency
//
// One goroutine (the bundler) owns the open bundles and the set of claimed
// source paths; Add, the periodic scan and the fsnotify watcher only send it
// candidate paths. A bounded pool of uploader goroutines takes sealed bundles
// from it and reports back when a bundle's files are gone. Memory does not
// depend on the backlog: the bundler stops taking candidates while
// 2×UploadConcurrency sealed bundles wait for upload (so the spool holds at
// most that many plus the open bundles), the scan reads directories in
// batches, and sources are streamed, never held whole unless they are small.
//
// Add never blocks: when the bundler is busy the hint is dropped (counted)
// and the next periodic scan, which runs in every mode, finds the file. The
// scan alone is enough for correctness; Add and fsnotify only lower latency.
//
// An Archiver is safe for concurrent use; Run may be called once.
//
// # What it must not do
//
// It never deletes a source before the upload of its bundle is confirmed,
// never deletes a quarantined file, never overwrites an object, and never
// writes anything but tarballs into the store. It does not know which
// backend it talks to: it sees upload only through [Uploader] and the
// sentinel errors of package upload.
package archive
