package work

import (
	"testing"
	"time"
)

// trio is three agents that cannot run together, as on a 16 GB card.
func trio(mod func(map[string]AgentLoad)) map[string]AgentLoad {
	l := map[string]AgentLoad{
		"po":        {Agent: "po", Conflicts: []string{"architect", "dev"}},
		"architect": {Agent: "architect", Conflicts: []string{"po", "dev"}},
		"dev":       {Agent: "dev", Conflicts: []string{"po", "architect"}},
	}
	if mod != nil {
		mod(l)
	}
	return l
}

func set(l map[string]AgentLoad, agent string, f func(*AgentLoad)) {
	a := l[agent]
	f(&a)
	l[agent] = a
}

func TestPick(t *testing.T) {
	t0 := time.Unix(1000, 0)
	qs := func(items ...any) []Queue {
		var out []Queue
		for i := 0; i+2 < len(items); i += 3 {
			out = append(out, Queue{Agent: items[i].(string), Items: items[i+1].(int), Oldest: t0.Add(time.Duration(items[i+2].(int)) * time.Second)})
		}
		return out
	}
	cases := []struct {
		name string
		v    view
		want string // "" for none
		cold bool
	}{
		{
			name: "work that has given way for max_yield takes its turn though a client waits",
			v: view{queues: qs("po", 3, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "dev", func(a *AgentLoad) { a.Running = true; a.Interactive = 2 })
			}), inflight: map[string]int{}, concurrency: 4, due: map[string]bool{"po": true}},
			want: "po", cold: true,
		},
		{
			name: "work not yet due gives way to the same client",
			v: view{queues: qs("po", 3, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "dev", func(a *AgentLoad) { a.Running = true; a.Interactive = 2 })
			}), inflight: map[string]int{}, concurrency: 4, due: map[string]bool{"architect": true}},
		},
		{
			name: "due work still waits for an eviction of its agent",
			v: view{queues: qs("po", 3, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Draining = true })
			}), inflight: map[string]int{}, concurrency: 4, due: map[string]bool{"po": true}},
		},
		{
			name: "stays with the agent it feeds while that one has work, though another has more",
			v: view{queues: qs("po", 2, 0, "dev", 9, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true })
			}), inflight: map[string]int{"po": 1}, total: 1, concurrency: 4, current: "po"},
			want: "po",
		},
		{
			name: "keeps feeding an agent still starting for its work",
			v: view{queues: qs("dev", 3, 0, "po", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "dev", func(a *AgentLoad) { a.Starting = true })
			}), inflight: map[string]int{"dev": 1}, total: 1, concurrency: 4, current: "dev"},
			want: "dev",
		},
		{
			name: "uses an agent that is up (a client's) before switching",
			v: view{queues: qs("po", 1, 0, "dev", 9, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true })
			}), inflight: map[string]int{}, concurrency: 4, current: "dev"},
			want: "po",
		},
		{
			name: "switches to the agent with the most work when the current one has none",
			v: view{queues: qs("architect", 3, 0, "dev", 7, 5), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true })
			}), inflight: map[string]int{"po": 2}, total: 2, concurrency: 4, current: "po"},
			want: "dev", cold: true,
		},
		{
			name: "on a tie, the oldest work",
			v: view{queues: qs("architect", 5, 9, "dev", 5, 3), loads: trio(nil),
				inflight: map[string]int{}, concurrency: 4},
			want: "dev", cold: true,
		},
		{
			name: "never past the concurrency bound",
			v: view{queues: qs("po", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true })
			}), inflight: map[string]int{"po": 2}, total: 2, concurrency: 2, current: "po"},
			want: "",
		},
		{
			name: "stops feeding when a client waits for a conflicting agent",
			v: view{queues: qs("po", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true })
				set(l, "dev", func(a *AgentLoad) { a.Interactive = 1 })
			}), inflight: map[string]int{"po": 1}, total: 1, concurrency: 4, current: "po"},
			want: "",
		},
		{
			name: "does not switch while a client waits for another agent",
			v: view{queues: qs("architect", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "dev", func(a *AgentLoad) { a.Interactive = 2 })
			}), inflight: map[string]int{}, concurrency: 4},
			want: "",
		},
		{
			name: "feeds the agent a client waits for",
			v: view{queues: qs("dev", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "dev", func(a *AgentLoad) { a.Interactive = 1; a.Starting = true })
			}), inflight: map[string]int{}, concurrency: 4},
			want: "dev",
		},
		{
			name: "a client waiting for an agent that fits beside ours does not stop us",
			v: view{queues: qs("po", 5, 0), loads: map[string]AgentLoad{
				"po":    {Agent: "po", Running: true},
				"small": {Agent: "small", Interactive: 3},
			}, inflight: map[string]int{"po": 1}, total: 1, concurrency: 4, current: "po"},
			want: "po",
		},
		{
			name: "an agent being evicted gets no more work",
			v: view{queues: qs("po", 5, 0), loads: trio(func(l map[string]AgentLoad) {
				set(l, "po", func(a *AgentLoad) { a.Running = true; a.Draining = true })
			}), inflight: map[string]int{}, concurrency: 4, current: "po"},
			want: "",
		},
		{
			name: "nothing eligible",
			v:    view{loads: trio(nil), inflight: map[string]int{}, concurrency: 4},
			want: "",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, ok := pick(&c.v)
			if c.want == "" {
				if ok {
					t.Fatalf("picked %+v, want nothing", d)
				}
				return
			}
			if !ok || d.agent != c.want || d.cold != c.cold {
				t.Fatalf("picked %+v (%v), want %s cold=%v", d, ok, c.want, c.cold)
			}
		})
	}
}
