from scorer.process import main

main()
