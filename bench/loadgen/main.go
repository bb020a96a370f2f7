// loadgen: an open-loop load generator for POST /v1/pings, the seed's fleet as it is.
//
// Every driver has its own token and posts one ping every `-interval`, at its own phase of
// the interval: request j is due at start + j/rate (rate = drivers/interval) and belongs to
// driver j mod drivers. A request leaves at its due time whatever the earlier answers did
// (open loop), and its latency is counted from that due time, not from when it could
// leave: a slow server shows as latency rather than as a lower offered rate (no
// coordinated omission). Each request is tried once; its status is its first try's.
//
// Standard library only, so that it builds offline. It prints one JSON object on stdout.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	url         string
	tokensPath  string
	drivers     int
	interval    time.Duration
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	maxFlight   int
	maxConns    int
	idleTimeout time.Duration
	tick        time.Duration
	perDriver   bool
}

// outcome of one request, written once, when it is answered or given up on.
type outcome struct {
	due      time.Time
	latency  time.Duration // from the due time to the end of the answer
	service  time.Duration // from leaving to the end of the answer
	status   int           // 0: no answer (see err)
	err      string
	measured bool
}

type second struct {
	Sent      int `json:"sent"`
	Accepted  int `json:"accepted"`
	Other     int `json:"other"`
	P99Micros int `json:"p99_us"`
}

type report struct {
	Drivers          int                `json:"drivers"`
	IntervalS        float64            `json:"interval_s"`
	OfferedPerS      float64            `json:"offered_requests_per_s"`
	WarmupS          float64            `json:"warmup_s"`
	DurationS        float64            `json:"duration_s"`
	Due              int                `json:"due"`
	Sent             int                `json:"sent"`
	Dropped          int                `json:"dropped"`
	Completed        int                `json:"completed"`
	Statuses         map[string]int     `json:"statuses"`
	Errors           map[string]int     `json:"errors"`
	AcceptedFirstTry float64            `json:"accepted_first_try"`
	LatencyMs        map[string]float64 `json:"latency_ms"`
	ServiceMs        map[string]float64 `json:"service_ms"`
	LateLeavingMaxMs float64            `json:"late_leaving_max_ms"`
	Connections      int64              `json:"connections"`
	QueuedMax        int                `json:"queued_max"`
	CPUSeconds       float64            `json:"cpu_s"`
	CPUCores         float64            `json:"cpu_cores"`
	WallS            float64            `json:"wall_s"`
	Timeline         []second           `json:"timeline"`
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", "", "POST target, e.g. http://127.0.0.1:18001/v1/pings")
	flag.StringVar(&o.tokensPath, "tokens", "", "file of driver tokens, one per line")
	flag.IntVar(&o.drivers, "drivers", 0, "drivers (default: one per token; tokens are reused if fewer)")
	flag.DurationVar(&o.interval, "interval", 4*time.Second, "each driver's interval between pings")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "measured time")
	flag.DurationVar(&o.warmup, "warmup", 0, "time run before the measured time, not counted")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "a request without an answer this long after its due time is an error")
	flag.DurationVar(&o.idleTimeout, "idle-timeout", 30*time.Second, "a connection idle this long is closed, not reused (keep it below the server's keep-alive)")
	flag.DurationVar(&o.tick, "tick", time.Millisecond, "the scheduler's resolution: requests due within it leave together")
	flag.IntVar(&o.maxConns, "max-conns", 4000, "connections open at once at most; a request due when all are busy waits for one (its latency still counts from its due time)")
	flag.BoolVar(&o.perDriver, "conn-per-driver", false, "each driver on a kept-alive connection of its own, as a phone holds one; a ping due while the driver's previous one is unanswered waits behind it (-max-conns and -idle-timeout do not apply)")
	flag.IntVar(&o.maxFlight, "max-in-flight", 20000, "requests awaiting answers at once; a due request beyond it is dropped and counted")
	flag.Parse()
	runtime.GOMAXPROCS(1) // one thread runs the loop; more would only hand work around
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}

func readTokens(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var tokens []string
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64*1024), 64*1024)
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			tokens = append(tokens, line)
		}
	}
	return tokens, scanner.Err()
}

func run(o options) error {
	if o.url == "" || o.tokensPath == "" {
		return errors.New("-url and -tokens are required")
	}
	tokens, err := readTokens(o.tokensPath)
	if err != nil {
		return err
	}
	if len(tokens) == 0 {
		return errors.New("no tokens in " + o.tokensPath)
	}
	if o.drivers <= 0 {
		o.drivers = len(tokens)
	}
	auth := make([]string, len(tokens))
	for i, t := range tokens {
		auth[i] = "Bearer " + t
	}
	rate := float64(o.drivers) / o.interval.Seconds()
	step := time.Duration(float64(time.Second) / rate)
	total := int((o.warmup + o.duration).Seconds() * rate)
	warmupCount := int(o.warmup.Seconds() * rate)

	target, err := parseTarget(o.url)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	// Each driver drives along its own line, 10 m a ping, somewhere in Bengaluru.
	lat := make([]float64, o.drivers)
	lon := make([]float64, o.drivers)
	for d := range lat {
		lat[d] = 12.90 + rng.Float64()*0.15
		lon[d] = 77.50 + rng.Float64()*0.20
	}
	next := func(j int, due time.Time) []byte {
		d := j % o.drivers
		lon[d] += 0.000092
		return target.request(auth[d%len(auth)], pingBody(rng, due, lat[d], lon[d]))
	}

	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now().Add(50 * time.Millisecond)
	l, err := newLoop(o, target.addr)
	if err != nil {
		return err
	}
	outcomes, lateMax, err := l.run(start, step, total, next)
	if err != nil {
		return err
	}
	for j := range outcomes {
		outcomes[j].measured = j >= warmupCount
	}
	wall := time.Since(start)
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := tv(after.Utime) + tv(after.Stime) - tv(before.Utime) - tv(before.Stime)

	r := summarise(outcomes, start.Add(o.warmup))
	r.Drivers, r.IntervalS, r.OfferedPerS = o.drivers, o.interval.Seconds(), rate
	r.WarmupS, r.DurationS = o.warmup.Seconds(), o.duration.Seconds()
	r.LateLeavingMaxMs = ms(lateMax)
	r.Connections = l.dialled
	r.QueuedMax = l.queuedMax
	r.CPUSeconds, r.WallS = cpu, wall.Seconds()
	r.CPUCores = cpu / wall.Seconds()
	return json.NewEncoder(os.Stdout).Encode(r)
}

var hexdigits = []byte("0123456789abcdef")

func pingBody(rng *rand.Rand, due time.Time, lat, lon float64) []byte {
	var id [36]byte
	for i := range id {
		id[i] = hexdigits[rng.Intn(16)]
	}
	id[8], id[13], id[18], id[23] = '-', '-', '-', '-'
	id[14] = '4'                      // version 4
	id[19] = hexdigits[8+rng.Intn(4)] // variant 10xx
	b := make([]byte, 0, 192)
	b = append(b, `{"pings":[{"ping_id":"`...)
	b = append(b, id[:]...)
	b = append(b, `","ts":"`...)
	b = due.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, `","lat":`...)
	b = strconv.AppendFloat(b, lat, 'f', 6, 64)
	b = append(b, `,"lon":`...)
	b = strconv.AppendFloat(b, lon, 'f', 6, 64)
	return append(b, `,"speed_mps":10.0,"heading_deg":90.0,"accuracy_m":5.0}]}`...)
}

func summarise(outcomes []outcome, measuredFrom time.Time) report {
	r := report{Statuses: map[string]int{}, Errors: map[string]int{}}
	var latencies, services []time.Duration
	timeline := map[int]*second{}
	perSecond := map[int][]time.Duration{}
	accepted := 0
	for _, o := range outcomes {
		if !o.measured {
			continue
		}
		r.Due++
		sec := int(o.due.Sub(measuredFrom) / time.Second)
		s := timeline[sec]
		if s == nil {
			s = &second{}
			timeline[sec] = s
		}
		if o.err == "dropped" {
			r.Dropped++
		} else {
			r.Sent++
			s.Sent++
		}
		if o.status == 0 {
			r.Errors[o.err]++
			s.Other++
			continue
		}
		r.Completed++
		r.Statuses[fmt.Sprint(o.status)]++
		latencies = append(latencies, o.latency)
		services = append(services, o.service)
		perSecond[sec] = append(perSecond[sec], o.latency)
		if o.status == 202 {
			accepted++
			s.Accepted++
		} else {
			s.Other++
		}
	}
	if r.Due > 0 {
		r.AcceptedFirstTry = float64(accepted) / float64(r.Due)
	}
	r.LatencyMs = percentiles(latencies)
	r.ServiceMs = percentiles(services)
	for sec := 0; sec < len(timeline); sec++ {
		if s := timeline[sec]; s != nil {
			s.P99Micros = int(percentile(sorted(perSecond[sec]), 99) / time.Microsecond)
			r.Timeline = append(r.Timeline, *s)
		}
	}
	return r
}

func sorted(values []time.Duration) []time.Duration {
	sort.Slice(values, func(a, b int) bool { return values[a] < values[b] })
	return values
}

func percentile(sortedValues []time.Duration, p float64) time.Duration {
	if len(sortedValues) == 0 {
		return 0
	}
	index := int(p / 100 * float64(len(sortedValues)))
	if index >= len(sortedValues) {
		index = len(sortedValues) - 1
	}
	return sortedValues[index]
}

func percentiles(values []time.Duration) map[string]float64 {
	sorted(values)
	out := map[string]float64{}
	for _, p := range []float64{50, 90, 99, 99.9, 100} {
		out["p"+strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%g", p), ".0"), ".")] = ms(percentile(values, p))
	}
	out["max"] = out["p100"]
	delete(out, "p100")
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// target is where the requests go; its request bytes are formatted once per request.
type target struct {
	addr, host, path string
}

func parseTarget(raw string) (target, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return target{}, fmt.Errorf("-url must be an http:// URL, got %q", raw)
	}
	addr := u.Host
	if u.Port() == "" {
		addr += ":80"
	}
	return target{addr: addr, host: u.Host, path: u.RequestURI()}, nil
}

func (t target) request(auth string, body []byte) []byte {
	b := make([]byte, 0, 256+len(auth)+len(body))
	b = append(b, "POST "...)
	b = append(b, t.path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, t.host...)
	b = append(b, "\r\nAuthorization: "...)
	b = append(b, auth...)
	b = append(b, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	return append(b, body...)
}
