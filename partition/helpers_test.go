package partition

import "os"

func fileSize(p string) (int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o644) }
