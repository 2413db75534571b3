package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// UnitState is what systemd knows of one agent's unit.
type UnitState struct {
	LoadState   string // loaded, not-found, masked, error
	ActiveState string // active, activating, deactivating, inactive, failed
	SubState    string // running, auto-restart, dead, failed, ...
	MainPID     int
	// Since is when the unit last entered the active state (zero if never).
	Since     time.Time
	NRestarts int
	// Result is the service's last result: success, exit-code, signal,
	// timeout, start-limit-hit, ...
	Result string
	// ExecMainCode and ExecMainStatus are how the main process last ended:
	// CLD_EXITED (1) and its exit status, or CLD_KILLED (2) / CLD_DUMPED (3)
	// and the signal; 0 while it runs.
	ExecMainCode   int
	ExecMainStatus int
	InvocationID   string
	// MemoryBytes is the host memory the unit's processes hold now
	// (systemd's MemoryCurrent, from the unit's cgroup); 0 when systemd
	// does not account it.
	MemoryBytes uint64
}

// Running reports whether the unit holds or is about to hold an engine.
func (u UnitState) Running() bool {
	switch u.ActiveState {
	case "active", "activating", "reloading":
		return u.SubState != "auto-restart"
	}
	return false
}

// Systemd is the part of systemd the supervisor drives. The D-Bus
// implementation is NewDBus; tests use fakes.
type Systemd interface {
	// Start starts unit and waits for its start job to finish.
	Start(ctx context.Context, unit string) error
	// Stop stops unit and waits for its stop job to finish.
	Stop(ctx context.Context, unit string) error
	// Reload is daemon-reload.
	Reload(ctx context.Context) error
	// ResetFailed clears a failed state and start-limit counter.
	ResetFailed(ctx context.Context, unit string) error
	State(ctx context.Context, unit string) (UnitState, error)
	Close()
}

// JobError is a systemd job that ended other than "done".
type JobError struct {
	Op, Unit, Result string
}

func (e *JobError) Error() string {
	return fmt.Sprintf("%s %s: job %s", e.Op, e.Unit, e.Result)
}

// DBus drives systemd over D-Bus with go-systemd. Every call is bounded by
// timeout; a job's wait is bounded by the caller's context.
type DBus struct {
	conn    *sd.Conn
	timeout time.Duration
}

// NewDBus connects to the system bus ($DBUS_SYSTEM_BUS_ADDRESS or the
// standard socket), falling back to systemd's private socket as root.
func NewDBus(ctx context.Context, timeout time.Duration) (*DBus, error) {
	// godbus closes a connection when the context it was dialled with ends,
	// so dial with one that lives as long as the connection and bound only
	// the handshake here.
	type dialed struct {
		conn *sd.Conn
		err  error
	}
	ch := make(chan dialed, 1)
	go func() {
		conn, err := sd.NewWithContext(context.WithoutCancel(ctx))
		ch <- dialed{conn, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case d := <-ch:
		if d.err != nil {
			return nil, fmt.Errorf("connect to systemd over D-Bus: %w", explain(d.err))
		}
		return &DBus{conn: d.conn, timeout: timeout}, nil
	case <-t.C:
	case <-ctx.Done():
	}
	go func() {
		if d := <-ch; d.conn != nil {
			d.conn.Close()
		}
	}()
	return nil, fmt.Errorf("connect to systemd over D-Bus: no answer within %s (is systemd running?)", timeout)
}

// Close closes the connection.
func (d *DBus) Close() { d.conn.Close() }

func (d *DBus) job(ctx context.Context, op, unit string, call func(context.Context, string, string, chan<- string) (int, error)) error {
	// Buffered: go-systemd sends the result while holding its job lock, so
	// an unread unbuffered channel would block every later job (go-systemd #429).
	ch := make(chan string, 1)
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	_, err := call(cctx, unit, "replace", ch)
	cancel()
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, unit, explain(err))
	}
	select {
	case r := <-ch:
		if r != "done" {
			return &JobError{Op: op, Unit: unit, Result: r}
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: waiting for the job: %w", op, unit, ctx.Err())
	}
}

// Start implements Systemd.
func (d *DBus) Start(ctx context.Context, unit string) error {
	return d.job(ctx, "start", unit, d.conn.StartUnitContext)
}

// Stop implements Systemd.
func (d *DBus) Stop(ctx context.Context, unit string) error {
	return d.job(ctx, "stop", unit, d.conn.StopUnitContext)
}

// Reload implements Systemd.
func (d *DBus) Reload(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	if err := d.conn.ReloadContext(cctx); err != nil {
		return fmt.Errorf("reload systemd: %w", explain(err))
	}
	return nil
}

// ResetFailed implements Systemd.
func (d *DBus) ResetFailed(ctx context.Context, unit string) error {
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	err := d.conn.ResetFailedUnitContext(cctx, unit)
	var de godbus.Error
	if errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reset-failed %s: %w", unit, explain(err))
	}
	return nil
}

// State implements Systemd.
func (d *DBus) State(ctx context.Context, unit string) (UnitState, error) {
	cctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var st UnitState
	props, err := d.conn.GetUnitPropertiesContext(cctx, unit)
	if err != nil {
		return st, fmt.Errorf("state of %s: %w", unit, explain(err))
	}
	st.LoadState, _ = props["LoadState"].(string)
	st.ActiveState, _ = props["ActiveState"].(string)
	st.SubState, _ = props["SubState"].(string)
	if us, ok := props["ActiveEnterTimestamp"].(uint64); ok && us > 0 {
		st.Since = time.UnixMicro(int64(us))
	}
	if id, ok := props["InvocationID"].([]byte); ok {
		st.InvocationID = fmt.Sprintf("%x", id)
	}
	if st.LoadState != "loaded" || !strings.HasSuffix(unit, ".service") {
		// A socket unit (vagentd.socket) has no main process.
		return st, nil
	}
	svc, err := d.conn.GetUnitTypePropertiesContext(cctx, unit, "Service")
	if err != nil {
		return st, fmt.Errorf("service state of %s: %w", unit, explain(err))
	}
	if pid, ok := svc["MainPID"].(uint32); ok {
		st.MainPID = int(pid)
	}
	if n, ok := svc["NRestarts"].(uint32); ok {
		st.NRestarts = int(n)
	}
	st.Result, _ = svc["Result"].(string)
	if c, ok := svc["ExecMainCode"].(int32); ok {
		st.ExecMainCode = int(c)
	}
	if c, ok := svc["ExecMainStatus"].(int32); ok {
		st.ExecMainStatus = int(c)
	}
	if m, ok := svc["MemoryCurrent"].(uint64); ok && m != math.MaxUint64 {
		st.MemoryBytes = m
	}
	return st, nil
}

// explain turns the D-Bus errors users meet into sentences that say what to do.
func explain(err error) error {
	var de godbus.Error
	if errors.As(err, &de) {
		switch de.Name {
		case "org.freedesktop.DBus.Error.AccessDenied",
			"org.freedesktop.DBus.Error.InteractiveAuthorizationRequired":
			return fmt.Errorf("permission denied by systemd (polkit): run as root, or as user vagent with vagent's polkit rule installed; members of group vagent go through vagentd (%s)", de.Name)
		case "org.freedesktop.systemd1.NoSuchUnit":
			return fmt.Errorf("no such unit: run `vagentctl apply` first (%s)", de.Name)
		}
	}
	msg := err.Error()
	if strings.Contains(msg, "no such file or directory") || strings.Contains(msg, "connection refused") {
		return fmt.Errorf("%w (is systemd running and the system bus reachable?)", err)
	}
	return err
}
