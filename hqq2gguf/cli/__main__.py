from hqq2gguf.cli import main

main()
