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
