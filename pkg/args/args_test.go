package args

import (
	"slices"
	"testing"
)

func TestMerge(t *testing.T) {
	got := Merge(map[string]string{"v": "0", "profiling": "false"}, []string{"v=2", "--audit-log-maxage=30", "feature-gates=A=true,B=false"})
	want := []string{"--audit-log-maxage=30", "--feature-gates=A=true,B=false", "--profiling=false", "--v=2"}
	if !slices.Equal(got, want) {
		t.Errorf("Merge:\n got %v\nwant %v", got, want)
	}
	if v := Value(got, "feature-gates"); v != "A=true,B=false" {
		t.Errorf("Value = %q", v)
	}
	if v := Value(got, "absent"); v != "" {
		t.Errorf("Value of an absent flag = %q", v)
	}
}

func TestOverride(t *testing.T) {
	overrides := []string{"v=2", "--service-node-port-range=20000-20100", "service-node-port-range=30000-30100", "--flag="}
	if v, ok := Override(overrides, "service-node-port-range"); !ok || v != "30000-30100" {
		t.Errorf("the last of two, one with dashes: %q, %v", v, ok)
	}
	if v, ok := Override(overrides, "flag"); !ok || v != "" {
		t.Errorf("an empty value: %q, %v", v, ok)
	}
	if v, ok := Override(overrides, "absent"); ok || v != "" {
		t.Errorf("an absent key: %q, %v", v, ok)
	}
}
