// Command gopeer is the seed's design in Go, for `make bench` (tests/benchmarks/bench.py): the
// same jobs through segmentio/kafka-go, the client the Go original used, set up as a Go user who
// wants throughput would set it up.
//
//	gopeer produce -brokers HOST:PORT -topic T -file jobs.tsv [-writers 2] [-per-write 10000]
//	gopeer consume -brokers HOST:PORT -topic T -group G -messages N [-readers 2] [-handle]
//
// produce sends every "key\tvalue" line of the file (the bytes the producer service sent) with
// one kafka.Writer (Hash balancer, acks=all) shared by -writers goroutines, each calling
// WriteMessages with -per-write messages at a time. Timed from reading the first line to the
// last acknowledgement.
//
// consume reads the topic with -readers kafka.Readers in consumer group -group (offsets
// committed every second, and once more when the readers close) until it has seen N distinct
// messages. The readers start reading once the group is stable with each of them owning
// partitions, so the group join is not timed; timed from the first message read to the N-th.
// Without -handle it reads raw bytes and commits what it has read (ReadMessage): a reference.
// With -handle it does what the consumer service does for each message: decode the JSON into
// a job (json.Unmarshal into a struct, payload and created_at included), call a no-op
// handler, and only then mark the offset for the next commit (FetchMessage, CommitMessages:
// every second, as the service's auto.commit.interval.ms=1000). Run with -readers 1 it has
// the parallelism of one service member (CONSUMER_WORKERS=1, CONSUMER_CONCURRENCY=1).
//
// Either prints one JSON line: messages, seconds, bytes (values) and a few client statistics.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "produce" && os.Args[1] != "consume") {
		fmt.Fprintln(os.Stderr, "usage: gopeer produce|consume -h")
		os.Exit(2)
	}
	mode := os.Args[1]
	flags := flag.NewFlagSet(mode, flag.ExitOnError)
	brokers := flags.String("brokers", "localhost:9092", "bootstrap servers, comma-separated")
	topic := flags.String("topic", "", "topic to produce to or consume from")
	file := flags.String("file", "", "produce: lines key<TAB>value to send")
	writers := flags.Int("writers", 2, "produce: goroutines calling WriteMessages")
	perWrite := flags.Int("per-write", 10_000, "produce: messages per WriteMessages call")
	group := flags.String("group", "", "consume: consumer group id")
	readers := flags.Int("readers", 2, "consume: kafka.Readers in the group")
	messages := flags.Int("messages", 0, "consume: distinct messages to read (all of the topic)")
	handle := flags.Bool("handle", false, "consume: decode each job, run a no-op handler, then commit")
	timeout := flags.Duration("timeout", 10*time.Minute, "give up after this long")
	_ = flags.Parse(os.Args[2:])

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	addrs := strings.Split(*brokers, ",")
	var result map[string]any
	var err error
	if mode == "produce" {
		result, err = produce(ctx, addrs, *topic, *file, *writers, *perWrite)
	} else {
		result, err = consume(ctx, addrs, *topic, *group, *readers, *messages, *handle)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gopeer %s: %v\n", mode, err)
		os.Exit(1)
	}
	result["mode"] = mode
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		os.Exit(1)
	}
}

var errorLog = kafka.LoggerFunc(log.New(os.Stderr, "kafka-go: ", log.LstdFlags).Printf)

func produce(ctx context.Context, brokers []string, topic, file string, writers, perWrite int) (map[string]any, error) {
	w := &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     &kafka.Hash{}, // the seed's: FNV-1a of the key
		RequiredAcks: kafka.RequireAll,
		// A call's 10k messages spread over the partitions; batches of up to 1,000 messages
		// (168 KB here) per request, and a partition's last, partial batch waits at most 5 ms
		// (librdkafka's linger.ms in the other rows) for the other writer's messages.
		BatchSize:    1_000,
		BatchBytes:   1 << 20,
		BatchTimeout: 5 * time.Millisecond,
		ErrorLogger:  errorLog,
	}
	defer w.Close()

	start := time.Now()
	chunks := make(chan []kafka.Message, writers)
	readErr := make(chan error, 1)
	go func() {
		defer close(chunks)
		readErr <- readChunks(file, perWrite, chunks)
	}()

	var mu sync.Mutex
	var sent, valueBytes int
	var writeErr error
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for chunk := range chunks {
				err := w.WriteMessages(ctx, chunk...)
				mu.Lock()
				if err != nil && writeErr == nil {
					writeErr = err
				}
				if err == nil {
					sent += len(chunk)
					for _, m := range chunk {
						valueBytes += len(m.Value)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	if err := errors.Join(<-readErr, writeErr); err != nil {
		return nil, err
	}
	stats := w.Stats()
	return map[string]any{"messages": sent, "seconds": seconds, "bytes": valueBytes, "writers": writers,
		"per_write": perWrite, "requests": stats.Writes, "avg_batch": stats.BatchSize.Avg}, nil
}

// readChunks sends the file's lines as messages, perWrite at a time.
func readChunks(file string, perWrite int, chunks chan<- []kafka.Message) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	chunk := make([]kafka.Message, 0, perWrite)
	for lines.Scan() {
		key, value, found := bytes.Cut(lines.Bytes(), []byte("\t"))
		if !found {
			return fmt.Errorf("%s: a line without a tab: %q", file, lines.Text())
		}
		chunk = append(chunk, kafka.Message{Key: bytes.Clone(key), Value: bytes.Clone(value)})
		if len(chunk) == perWrite {
			chunks <- chunk
			chunk = make([]kafka.Message, 0, perWrite)
		}
	}
	if len(chunk) > 0 {
		chunks <- chunk
	}
	return lines.Err()
}

// job is the wire format (shared/jobpipe/job.py), decoded as the service decodes it.
type job struct {
	ID        string     `json:"id"`
	Key       string     `json:"key"`
	Producer  int        `json:"producer"`
	Seq       int        `json:"seq"`
	CreatedAt time.Time  `json:"created_at"`
	Payload   any        `json:"payload"`
	Type      string     `json:"type,omitempty"`
	NotBefore *time.Time `json:"not_before,omitempty"`
}

var handled atomic.Int64 // what the no-op handler saw (keeps the decoded job in use)

// noop is the benchmark's handler, like tests.handlers:noop.
//
//go:noinline
func noop(j *job) error {
	if j.ID == "" {
		return errors.New("a job without an id")
	}
	handled.Add(1)
	return nil
}

// process decodes one message into a job and runs the handler: the service's work per job.
func process(m kafka.Message) error {
	var j job
	if err := json.Unmarshal(m.Value, &j); err != nil {
		return fmt.Errorf("partition %d offset %d is not a job: %w", m.Partition, m.Offset, err)
	}
	return noop(&j)
}

func consume(ctx context.Context, brokers []string, topic, group string, readers, messages int,
	handle bool) (map[string]any, error) {
	if messages <= 0 {
		return nil, errors.New("-messages must be the topic's message count")
	}
	rs := make([]*kafka.Reader, readers)
	for i := range rs {
		rs[i] = kafka.NewReader(kafka.ReaderConfig{
			Brokers:        brokers,
			GroupID:        group,
			Topic:          topic,
			MaxBytes:       10 << 20,               // per fetch: up to 10 MB instead of 1 MB
			MaxWait:        500 * time.Millisecond, // as librdkafka and Java (default 10 s: Close waits it out)
			QueueCapacity:  1_000,                  // messages fetched ahead of ReadMessage (default 100)
			CommitInterval: time.Second,
			ErrorLogger:    errorLog,
		})
	}
	defer closeAll(rs)
	if err := waitForGroup(ctx, brokers, group, readers); err != nil {
		return nil, err
	}

	// A partition moved by a rebalance is read again from its last commit: count each offset
	// once. Offsets start at 0 and every reader sees a partition's offsets in order, so a
	// message is new exactly when its offset is at least the partition's next unseen one.
	reading, stop := context.WithCancel(ctx)
	defer stop()
	var mu sync.Mutex
	next := map[int]int64{}
	var read, distinct, valueBytes int
	var first, last time.Time
	var readErr error
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var m kafka.Message
				var err error
				if handle {
					m, err = r.FetchMessage(reading)
					if err == nil {
						err = process(m)
					}
					if err == nil {
						err = r.CommitMessages(reading, m) // after handling; sent every CommitInterval
					}
				} else {
					m, err = r.ReadMessage(reading)
				}
				if err != nil {
					if reading.Err() == nil || ctx.Err() != nil {
						mu.Lock()
						readErr = errors.Join(readErr, err)
						mu.Unlock()
					}
					stop()
					return
				}
				mu.Lock()
				read++
				if read == 1 {
					first = time.Now()
				}
				if m.Offset >= next[m.Partition] {
					next[m.Partition] = m.Offset + 1
					distinct++
					valueBytes += len(m.Value)
					if distinct == messages {
						last = time.Now()
						stop()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if distinct != messages {
		return nil, fmt.Errorf("read %d of %d messages: %w", distinct, messages, readErr)
	}
	var rebalances int64
	for _, r := range rs {
		rebalances += r.Stats().Rebalances
	}
	return map[string]any{"messages": distinct, "seconds": last.Sub(first).Seconds(), "bytes": valueBytes,
		"readers": readers, "read": read, "generations": rebalances, "handled": handle}, nil
}

// waitForGroup returns once the group is stable with `members` members, each owning partitions.
func waitForGroup(ctx context.Context, brokers []string, group string, members int) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...)}
	state := "not described yet"
	for {
		described, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err == nil && len(described.Groups) == 1 {
			g := described.Groups[0]
			owning := 0
			for _, member := range g.Members {
				for _, t := range member.MemberAssignments.Topics {
					if len(t.Partitions) > 0 {
						owning++
						break
					}
				}
			}
			if g.Error == nil && g.GroupState == "Stable" && len(g.Members) == members && owning == members {
				return nil
			}
			state = fmt.Sprintf("%s, %d members, %d owning partitions", g.GroupState, len(g.Members), owning)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("group %s never settled with %d readers (last: %s)", group, members, state)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// closeAll closes the readers together; each commits its last offsets and leaves the group.
func closeAll(rs []*kafka.Reader) {
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Close()
		}()
	}
	wg.Wait()
}
