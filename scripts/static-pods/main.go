// cplb-static-pods runs what the static-pod manifests in a directory declare, on nodes without a kubelet (the
// project's control-plane image). It is how the kube-vip manifest that incus-cplb renders for kubelet nodes is run
// as rendered: the container's command (or its image's entrypoint) with its arguments and environment.
//
// Every second it reads the directory: a new or changed manifest (re)starts its containers, a removed one stops
// them, a container that exits is started again after a second. hostPath volumes must be mounted at the same path
// (there are no mount namespaces here); a manifest that needs anything else is refused with a log line.
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// Image entrypoints of the images the project runs: repository name -> binary in the image.
var entrypoints = map[string]string{"kube-vip": "/usr/local/bin/kube-vip"}

type pod struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Containers []container `json:"containers"`
		Volumes    []struct {
			Name     string `json:"name"`
			HostPath *struct {
				Path string `json:"path"`
			} `json:"hostPath"`
		} `json:"volumes"`
	} `json:"spec"`
}

type container struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
}

type running struct {
	digest string
	stop   chan struct{}
	done   sync.WaitGroup
}

func repository(image string) string {
	name := image
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name[strings.LastIndex(name, "/")+1:]
}

// argv of a container: its command, or its image's entrypoint, then its args.
func argv(c container) ([]string, error) {
	if len(c.Command) > 0 {
		return append(append([]string{}, c.Command...), c.Args...), nil
	}
	bin, ok := entrypoints[repository(c.Image)]
	if !ok {
		return nil, fmt.Errorf("container %s: image %s has no known entrypoint and no command", c.Name, c.Image)
	}
	return append([]string{bin}, c.Args...), nil
}

func check(p pod) error {
	paths := map[string]string{}
	for _, v := range p.Spec.Volumes {
		if v.HostPath != nil {
			paths[v.Name] = v.HostPath.Path
		}
	}
	for _, c := range p.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if paths[m.Name] != m.MountPath {
				return fmt.Errorf("container %s: volume %s is mounted at %s, not at its hostPath %q", c.Name, m.Name,
					m.MountPath, paths[m.Name])
			}
		}
		if _, err := argv(c); err != nil {
			return err
		}
	}
	return nil
}

// supervise runs one container until stop is closed, starting it again a second after it exits.
func supervise(podName string, c container, stop chan struct{}, done *sync.WaitGroup) {
	defer done.Done()
	args, _ := argv(c)
	env := os.Environ()
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	for {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		log.Printf("%s/%s: starting %s", podName, c.Name, strings.Join(args, " "))
		exited := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			exited <- err
		} else {
			go func() { exited <- cmd.Wait() }()
		}
		select {
		case err := <-exited:
			log.Printf("%s/%s: exited (%v)", podName, c.Name, err)
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
		case <-stop:
			if cmd.Process != nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					<-exited
				}
			}
			return
		}
	}
}

func main() {
	dir := flag.String("dir", "/etc/kubernetes/manifests", "static-pod manifests")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmsgprefix)
	log.SetPrefix("cplb-static-pods: ")
	pods := map[string]*running{}
	for {
		files, _ := filepath.Glob(filepath.Join(*dir, "*.yaml"))
		more, _ := filepath.Glob(filepath.Join(*dir, "*.yml"))
		files = append(files, more...)
		sort.Strings(files)
		seen := map[string]bool{}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			seen[f] = true
			digest := fmt.Sprintf("%x", sha256.Sum256(data))
			if r, ok := pods[f]; ok && r.digest == digest {
				continue
			}
			if r, ok := pods[f]; ok {
				close(r.stop)
				r.done.Wait()
				delete(pods, f)
			}
			var p pod
			if err := yaml.Unmarshal(data, &p); err != nil {
				log.Printf("%s: not a manifest: %v", f, err)
				pods[f] = &running{digest: digest, stop: make(chan struct{})}
				continue
			}
			r := &running{digest: digest, stop: make(chan struct{})}
			pods[f] = r
			if err := check(p); err != nil {
				log.Printf("%s: refused: %v", f, err)
				continue
			}
			for _, c := range p.Spec.Containers {
				r.done.Add(1)
				go supervise(p.Metadata.Name, c, r.stop, &r.done)
			}
		}
		for f, r := range pods {
			if !seen[f] {
				close(r.stop)
				r.done.Wait()
				delete(pods, f)
				log.Printf("%s: removed", f)
			}
		}
		time.Sleep(time.Second)
	}
}
