package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// console is the sandbox's /dev/console: a pseudo-terminal whose slave is
// bound over /dev/console inside, so that systemd's status lines land in a
// file rather than on the host's console. A goroutine drains the master
// (systemd would block on a full terminal) into DIR/console.log.
type console struct {
	master *os.File
	// slave stays open here for the sandbox's life: systemd closes and
	// reopens /dev/console, and with no slave open for a moment the master
	// would read EIO and the copy would stop.
	slave *os.File
	done  chan struct{}

	mu  sync.Mutex
	buf bytes.Buffer // everything read, for tail; bounded below
}

const consoleKeep = 256 << 10

// openConsole allocates a pseudo-terminal and starts copying its output to
// logPath. The caller passes the returned slave to the child; close closes
// it.
func openConsole(logPath string) (*console, *os.File, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox console: %w", err)
	}
	// SyscallConn, not Fd: Fd would switch the master to blocking mode, and
	// close could then not interrupt the reader.
	var unlock int32
	var n uint32
	rc, err := master.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			if err = ioctl(fd, syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); err != nil {
				err = fmt.Errorf("unlock pty: %w", err)
				return
			}
			if err = ioctl(fd, syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); err != nil {
				err = fmt.Errorf("pty number: %w", err)
			}
		})
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("sandbox console: %w", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("sandbox console: %w", err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		master.Close()
		slave.Close()
		return nil, nil, fmt.Errorf("sandbox console: %w", err)
	}
	c := &console{master: master, slave: slave, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer logf.Close()
		b := make([]byte, 32<<10)
		for {
			n, err := master.Read(b)
			if n > 0 {
				chunk := bytes.ReplaceAll(b[:n], []byte("\r"), nil)
				_, _ = logf.Write(chunk)
				c.mu.Lock()
				c.buf.Write(chunk)
				if c.buf.Len() > 2*consoleKeep {
					keep := append([]byte(nil), c.buf.Bytes()[c.buf.Len()-consoleKeep:]...)
					c.buf.Reset()
					c.buf.Write(keep)
				}
				c.mu.Unlock()
			}
			if err != nil { // close closed the master
				return
			}
		}
	}()
	return c, slave, nil
}

func ioctl(fd, req, arg uintptr) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg); e != 0 {
		return e
	}
	return nil
}

// tail returns the last n lines read so far.
func (c *console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	lines := strings.Split(strings.TrimRight(c.buf.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// close stops the copy, once the sandbox is dead.
func (c *console) close() {
	c.slave.Close()
	c.master.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}
