// Command pods measures how fast a kone node starts pods: it creates COUNT busybox pods at once
// and reports when each was first seen Running (watched, not polled), with the time until all
// were Running and the p50 and p99 of the per-pod times. scripts/bench/node runs it.
//
//	go run ./scripts/bench/pods -write-image DIR/busybox.tar   (an image of /bin/busybox, for the images dir)
//	go run ./scripts/bench/pods -kubeconfig K [-count 100]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kone-dev/kone/pkg/images"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "/etc/kone/kone.yaml", "admin kubeconfig")
	writeImage := flag.String("write-image", "", "write an OCI archive of Debian's busybox-static to this file and exit")
	count := flag.Int("count", 100, "pods to create at once")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after")
	flag.Parse()
	var err error
	if *writeImage != "" {
		err = writeBusybox(*writeImage)
	} else {
		err = run(*kubeconfig, image, *count, *timeout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pods:", err)
		os.Exit(1)
	}
}

const image = "docker.io/library/busybox:kone-bench"

func writeBusybox(path string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w; apt-get install busybox-static", err)
	}
	archive, err := images.OCIArchive(image, []string{"/bin/busybox"}, []images.File{{Name: "bin/busybox", Mode: 0o755, Data: bb}})
	if err != nil {
		return err
	}
	return os.WriteFile(path, archive, 0o644)
}

func run(kubeconfig, image string, count int, timeout time.Duration) error {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 200, 200
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ns := fmt.Sprintf("bench-pods-%d", time.Now().Unix())
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	defer func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		for i := 0; i < 300; i++ {
			if _, err := cs.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	// An informer, not a bare watch: it lists and watches again when the apiserver ends a watch.
	var mu sync.Mutex
	running := map[string]time.Time{}
	allRunning := make(chan struct{})
	record := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Status.Phase != corev1.PodRunning {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if _, seen := running[pod.Name]; !seen {
			running[pod.Name] = time.Now()
			if len(running) == count {
				close(allRunning)
			}
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	informer := factory.Core().V1().Pods().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: record, UpdateFunc: func(_, obj any) { record(obj) },
	}); err != nil {
		return err
	}
	// Shutdown waits for the informer to stop: stop it first, or it waits for the timeout
	// before the namespace is deleted.
	informing, stopInforming := context.WithCancel(ctx)
	factory.Start(informing.Done())
	defer func() {
		stopInforming()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return errors.New("pod informer did not sync")
	}

	created := map[string]time.Time{}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, count)
	for i := 0; i < count; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("p%03d", i)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{Name: "c", Image: image, ImagePullPolicy: corev1.PullNever,
						Command: []string{"/bin/busybox", "sleep", "3600"}}},
				},
			}
			t0 := time.Now()
			if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			created[name] = t0
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("create: %w", err)
	}

	select {
	case <-allRunning:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("%d of %d pods Running after %s", len(running), count, timeout)
	}
	mu.Lock()
	defer mu.Unlock()
	all := time.Since(start)
	var per []time.Duration
	for name, t := range running {
		per = append(per, t.Sub(created[name]))
	}
	sort.Slice(per, func(i, j int) bool { return per[i] < per[j] })
	pct := func(p float64) time.Duration { return per[int(p*float64(len(per)-1))] }
	fmt.Printf("%d pods Running in %d ms; per pod p50 %d ms, p99 %d ms\n", count, all.Milliseconds(), pct(0.5).Milliseconds(), pct(0.99).Milliseconds())
	return nil
}
