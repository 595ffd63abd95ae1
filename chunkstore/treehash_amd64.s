// Empty: lets treehash_amd64.go declare the linknamed functions without
// bodies (the Go compiler requires an assembly file in the package).
