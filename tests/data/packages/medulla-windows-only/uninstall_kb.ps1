Write-Output 'uninstall'
