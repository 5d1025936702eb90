// Package trafficgen generates real TCP traffic of known shapes between a
// client and a server, for end-to-end tests of packet capture and for local
// demos: short request/response exchanges, long-lived chatty connections,
// bulk transfers, RST aborts and consecutive connections that reuse the same
// 4-tuple.
//
// The client and the server speak a tiny protocol: the client opens every
// connection with one JSON line (a Request) that tells the server how to
// behave; all other bytes are filler. The client writes one Record (a JSON
// line) per connection it made; the server, if asked (ServerConfig.Accepted),
// one Accept per connection it accepted, with the accepted socket's kernel
// cookie (SO_COOKIE, Linux), from which a test derives the UUID tcp-info
// gives the socket without asking tcp-info.
//
// Safety: the package refuses to connect to, or listen on, anything but the
// documentation ranges 192.0.2.0/24, 198.51.100.0/24 and 2001:db8::/32
// (listening, and fetching metrics, may also use loopback). The check runs
// when flags are parsed and again on every socket just before it connects or
// binds, so no code path can send a packet elsewhere.
//
// Concurrency contract: Server.Run and Client.Run own all the goroutines they
// start and return only after they have exited. A Server or Client is used by
// one Run call at a time.
package trafficgen
