from logger.main import main

main()
