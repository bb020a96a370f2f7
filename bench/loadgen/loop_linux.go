package main

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// loop is a single-threaded epoll client for HTTP/1.1 over kept-alive connections, as wrk
// is. Go's net/http costs about three times the CPU a request, and goroutines over the
// netpoller twice (thread handoffs): the generator's own cost is one of the figures.
type loop struct {
	o     options
	addr  syscall.SockaddrInet4
	epfd  int
	conns map[int]*conn
	idle  []*conn
	busy  int // requests sent or queued, not yet answered
	queue []queued
	// The most requests queued at once, waiting for a connection.
	queuedMax int
	dialled   int64
	// -conn-per-driver: each driver's own connection (nil until dialled, or once closed).
	byDriver []*conn
}

// queued is a request due while every connection was busy and no more could be opened:
// it leaves on the next free one, still stamped with its due time.
type queued struct {
	j       int
	due     time.Time
	request []byte
}

type conn struct {
	fd       int
	j        int // the request it carries, -1 when idle
	due      time.Time
	left     time.Time
	pending  []byte // request bytes not yet written
	dialing  bool   // connect() in progress: write once the socket is writable
	in       []byte // answer bytes read so far
	lastUsed time.Time
	driver   int      // -conn-per-driver: whose connection it is
	waiting  []queued // -conn-per-driver: the driver's pings due while this one was busy
}

func newLoop(o options, addr string) (*loop, error) {
	tcp, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	l := &loop{o: o, epfd: epfd, conns: map[int]*conn{}}
	if o.perDriver {
		l.byDriver = make([]*conn, o.drivers)
	}
	l.addr.Port = tcp.Port
	copy(l.addr.Addr[:], tcp.IP.To4())
	return l, nil
}

// run sends request j at start + j*step (made by next), and returns every request's outcome
// once all are answered or timed out, with how late the latest request left.
func (l *loop) run(start time.Time, step time.Duration, total int, next func(int, time.Time) []byte) ([]outcome, time.Duration, error) {
	defer syscall.Close(l.epfd)
	outcomes := make([]outcome, total)
	events := make([]syscall.EpollEvent, 256)
	var lateMax time.Duration
	lastSweep := time.Now()
	j := 0
	for j < total || l.busy > 0 {
		now := time.Now()
		for ; j < total; j++ {
			due := start.Add(time.Duration(j) * step)
			if due.After(now) {
				break
			}
			if late := now.Sub(due); late > lateMax {
				lateMax = late
			}
			if l.busy >= l.o.maxFlight {
				outcomes[j] = outcome{due: due, err: "dropped"}
				continue
			}
			if err := l.start(j, due, next(j, due), now); err != nil {
				outcomes[j] = outcome{due: due, err: err.Error(), latency: now.Sub(due)}
			}
		}
		wait := 100 * time.Millisecond
		if j < total {
			// Wake at the next due time, at the tick's resolution: requests due meanwhile
			// leave together, each still stamped with its own due time.
			wait = time.Until(start.Add(time.Duration(j) * step))
			if wait < l.o.tick {
				wait = l.o.tick
			}
		}
		n, err := epollWait(l.epfd, events, int(wait/time.Millisecond))
		if err != nil && !errors.Is(err, syscall.EINTR) {
			return nil, 0, err
		}
		now = time.Now()
		for _, ev := range events[:max0(n)] {
			c := l.conns[int(ev.Fd)]
			if c == nil {
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 && c.dialing {
				if !l.connected(c, outcomes, now) {
					continue
				}
			}
			if ev.Events&syscall.EPOLLOUT != 0 && len(c.pending) > 0 {
				l.write(c, outcomes, now)
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
				l.read(c, outcomes, now)
			}
		}
		if now.Sub(lastSweep) > 100*time.Millisecond {
			l.sweep(outcomes, now)
			lastSweep = now
		}
		l.dequeue(outcomes, now)
	}
	for _, c := range l.conns {
		syscall.Close(c.fd)
	}
	return outcomes, lateMax, nil
}

// epollWait blocks without telling Go's scheduler (a raw system call): there is no other
// goroutine to run meanwhile, and the hand-off of the thread it would otherwise arrange
// (a futex wake and a sleeping monitor each time) cost more CPU than the requests did.
func epollWait(epfd int, events []syscall.EpollEvent, msec int) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func max0(n int) int {
	if n < 0 {
		return 0
	}
	return n
}

// start puts request j on an idle connection, or on a new one: a request never waits for
// another's answer, unless -max-conns connections are open already (then it queues).
func (l *loop) start(j int, due time.Time, request []byte, now time.Time) error {
	if l.byDriver != nil {
		return l.startOnOwn(j, due, request, now)
	}
	c := l.idleConn(now)
	if c == nil {
		if len(l.conns) >= l.o.maxConns {
			l.queue = append(l.queue, queued{j, due, request})
			if len(l.queue) > l.queuedMax {
				l.queuedMax = len(l.queue)
			}
			l.busy++
			return nil
		}
		var err error
		if c, err = l.dial(); err != nil {
			return err
		}
	}
	return l.assign(c, j, due, request, now)
}

// startOnOwn puts request j on its driver's own connection: dialled if the driver has
// none, queued behind the driver's unanswered request if it is busy.
func (l *loop) startOnOwn(j int, due time.Time, request []byte, now time.Time) error {
	d := j % l.o.drivers
	c := l.byDriver[d]
	if c == nil {
		var err error
		if c, err = l.dial(); err != nil {
			return err
		}
		c.driver = d
		l.byDriver[d] = c
	}
	if c.j >= 0 {
		c.waiting = append(c.waiting, queued{j, due, request})
		l.busy++
		return nil
	}
	return l.assign(c, j, due, request, now)
}

func (l *loop) idleConn(now time.Time) *conn {
	for len(l.idle) > 0 {
		c := l.idle[len(l.idle)-1]
		l.idle = l.idle[:len(l.idle)-1]
		if now.Sub(c.lastUsed) < l.o.idleTimeout {
			return c
		}
		l.close(c)
	}
	return nil
}

func (l *loop) assign(c *conn, j int, due time.Time, request []byte, now time.Time) error {
	c.j, c.due, c.left, c.pending, c.in = j, due, now, request, c.in[:0]
	l.busy++
	if c.dialing {
		return nil // written when the connection is up (EPOLLOUT)
	}
	return l.writeFirst(c)
}

// dequeue sends queued requests while a connection is free or may be opened.
func (l *loop) dequeue(outcomes []outcome, now time.Time) {
	for len(l.queue) > 0 {
		c := l.idleConn(now)
		if c == nil && len(l.conns) >= l.o.maxConns {
			return
		}
		q := l.queue[0]
		l.queue = l.queue[1:]
		l.busy--
		var err error
		if c == nil {
			c, err = l.dial()
		}
		if err == nil {
			err = l.assign(c, q.j, q.due, q.request, now)
		}
		if err != nil {
			outcomes[q.j] = outcome{due: q.due, err: err.Error(), latency: now.Sub(q.due)}
		}
	}
}

// dial opens a connection without blocking: under overload the server's accept queue is
// full and a blocking connect would wait out SYN retries (seconds), holding up every
// request due meanwhile.
func (l *loop) dial() (*conn, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, errors.New("other")
	}
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	err = syscall.Connect(fd, &l.addr)
	if err != nil && !errors.Is(err, syscall.EINPROGRESS) {
		syscall.Close(fd)
		return nil, errors.New(classify(err))
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		syscall.Close(fd)
		return nil, errors.New("other")
	}
	c := &conn{fd: fd, j: -1, in: make([]byte, 0, 1024), dialing: err != nil}
	l.conns[fd] = c
	l.dialled++
	return c, nil
}

// writeFirst writes a new request; a request that does not fit in the socket buffer at
// once waits for EPOLLOUT.
func (l *loop) writeFirst(c *conn) error {
	n, err := syscall.Write(c.fd, c.pending)
	if err != nil && !errors.Is(err, syscall.EAGAIN) {
		l.busy--
		l.close(c)
		return errors.New(classify(err))
	}
	c.pending = c.pending[max0(n):]
	if len(c.pending) > 0 {
		l.watchWrites(c, true)
	}
	return nil
}

// connected finishes a non-blocking connect: false when it failed (the request with it).
func (l *loop) connected(c *conn, outcomes []outcome, now time.Time) bool {
	errno, err := syscall.GetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
	if err == nil && errno != 0 {
		err = syscall.Errno(errno)
	}
	if err != nil {
		l.fail(c, outcomes, now, classify(err))
		return false
	}
	c.dialing = false
	if len(c.pending) == 0 {
		l.watchWrites(c, false)
	}
	return true
}

func (l *loop) write(c *conn, outcomes []outcome, now time.Time) {
	n, err := syscall.Write(c.fd, c.pending)
	if err != nil && !errors.Is(err, syscall.EAGAIN) {
		l.fail(c, outcomes, now, classify(err))
		return
	}
	c.pending = c.pending[max0(n):]
	if len(c.pending) == 0 {
		l.watchWrites(c, false)
	}
}

func (l *loop) watchWrites(c *conn, on bool) {
	events := uint32(syscall.EPOLLIN | syscall.EPOLLRDHUP)
	if on {
		events |= syscall.EPOLLOUT
	}
	ev := syscall.EpollEvent{Events: events, Fd: int32(c.fd)}
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, c.fd, &ev)
}

var buf = make([]byte, 64*1024)

func (l *loop) read(c *conn, outcomes []outcome, now time.Time) {
	n, err := syscall.Read(c.fd, buf)
	if errors.Is(err, syscall.EAGAIN) {
		return
	}
	if c.j < 0 {
		l.close(c) // an idle connection the server closed (or spoke on): not ours to keep
		return
	}
	if err != nil {
		l.fail(c, outcomes, now, classify(err))
		return
	}
	if n == 0 {
		l.fail(c, outcomes, now, "reset")
		return
	}
	c.in = append(c.in, buf[:n]...)
	status, keep, done, perr := parseAnswer(c.in)
	if perr != nil {
		l.fail(c, outcomes, now, "malformed")
		return
	}
	if !done {
		return
	}
	outcomes[c.j] = outcome{due: c.due, status: status, latency: now.Sub(c.due), service: now.Sub(c.left)}
	l.busy--
	c.j = -1
	switch {
	case !keep:
		l.fail(c, outcomes, now, "closed")
	case l.byDriver != nil && len(c.waiting) > 0:
		q := c.waiting[0]
		c.waiting = c.waiting[1:]
		l.busy--
		if err := l.assign(c, q.j, q.due, q.request, now); err != nil {
			outcomes[q.j] = outcome{due: q.due, err: err.Error(), latency: now.Sub(q.due)}
		}
	case l.byDriver != nil:
		c.lastUsed = now // kept for the driver's next ping
	default:
		c.lastUsed = now
		l.idle = append(l.idle, c)
	}
}

// sweep ends the requests past their timeout, counted from their due time.
func (l *loop) sweep(outcomes []outcome, now time.Time) {
	for _, c := range l.conns {
		if c.j >= 0 && now.Sub(c.due) >= l.o.timeout {
			l.fail(c, outcomes, now, "timeout")
		}
	}
	kept := l.queue[:0]
	for _, q := range l.queue {
		if now.Sub(q.due) >= l.o.timeout {
			outcomes[q.j] = outcome{due: q.due, err: "timeout", latency: now.Sub(q.due)}
			l.busy--
		} else {
			kept = append(kept, q)
		}
	}
	l.queue = kept
}

func (l *loop) fail(c *conn, outcomes []outcome, now time.Time, reason string) {
	if c.j >= 0 {
		outcomes[c.j] = outcome{due: c.due, err: reason, latency: now.Sub(c.due)}
		l.busy--
		c.j = -1
	}
	// A driver's waiting pings go with its connection: each is an error of its own.
	for _, q := range c.waiting {
		outcomes[q.j] = outcome{due: q.due, err: reason, latency: now.Sub(q.due)}
		l.busy--
	}
	c.waiting = nil
	l.close(c)
}

func (l *loop) close(c *conn) {
	if l.byDriver != nil && l.byDriver[c.driver] == c {
		l.byDriver[c.driver] = nil // the driver's next ping dials again
	}
	delete(l.conns, c.fd)
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	syscall.Close(c.fd)
	for i, idle := range l.idle {
		if idle == c {
			l.idle = append(l.idle[:i], l.idle[i+1:]...)
			break
		}
	}
}

func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	default:
		return "other"
	}
}

var (
	headerEnd      = []byte("\r\n\r\n")
	contentLength  = []byte("content-length")
	connectionName = []byte("connection")
	closeValue     = []byte("close")
)

// parseAnswer reads an HTTP/1.1 answer with a Content-Length body: its status, whether the
// connection may be used again, and whether it is complete.
func parseAnswer(in []byte) (status int, keep bool, done bool, err error) {
	end := bytes.Index(in, headerEnd)
	if end < 0 {
		return 0, false, false, nil
	}
	lines := bytes.Split(in[:end], []byte("\r\n"))
	if len(lines[0]) < 12 || !bytes.HasPrefix(lines[0], []byte("HTTP/1.")) {
		return 0, false, false, errors.New("malformed status line")
	}
	if status, err = strconv.Atoi(string(lines[0][9:12])); err != nil {
		return 0, false, false, err
	}
	length, keep := -1, true
	for _, line := range lines[1:] {
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			return 0, false, false, errors.New("malformed header")
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, contentLength):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return 0, false, false, err
			}
		case bytes.EqualFold(name, connectionName) && bytes.EqualFold(value, closeValue):
			keep = false
		}
	}
	if length < 0 {
		return 0, false, false, errors.New("answer without Content-Length")
	}
	return status, keep, len(in) >= end+4+length, nil
}
